//! Idempotent batches for `POST /v1/events`: the `Idempotency-Key` request header (IETF
//! draft-ietf-httpapi-idempotency-key-header, as Stripe uses it). A retry with the same key
//! within `ingest.idempotency_horizon` is answered with the first answer and stores nothing
//! again, or, when the first attempt was cut short (a 503 halfway, a crash before the answer),
//! stores exactly the lines it had not stored.
//!
//! One small file per key in `<data_dir>/idempotency/` (named by a hash of the key, holding the
//! key itself), shared by every shard, since a retry may reach any of them. Before a new
//! batch's first line is appended its entry is written and fsynced as *pending*, with the
//! shard and that shard's next log offset (a floor: the batch's lines follow it, contiguous,
//! as one shard appends them without yielding). Once the batch is durable the entry gets the
//! answer (a rename, no fsync: a pending entry is resolved from the log anyway). A pending
//! entry met by a retry is resolved by reading that shard's log from the floor: the longest
//! run of the batch's first lines found there is what was stored; only the rest is appended.
//! Keys in flight are held in a set under a mutex, touched only by keyed batches (never by the
//! pixel, UDP or TCP): the same key arriving twice at once answers 409.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The key store could not be used.
#[derive(Debug, Error)]
#[error("idempotency keys: cannot {what} {}: {source}", path.display())]
pub struct KeyError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError { what, path, source }
}

/// What is known of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// A hash of the request body: the same key with another body is a conflict (422).
    pub fingerprint: String,
    /// The shard whose log took (or takes) the batch, and its next offset before the first
    /// line: the batch's lines are contiguous at or after it.
    pub shard: usize,
    pub floor: u64,
    /// Lines in the batch.
    pub lines: u64,
    /// Lines already stored by earlier attempts (elsewhere); this attempt appends the rest.
    #[serde(default)]
    pub prior: u64,
    /// The answer once the whole batch is durable; None while pending.
    pub answer: Option<serde_json::Value>,
    /// When the key was first seen (ms since the epoch, this process's clock; set by `put`):
    /// the horizon counts from here.
    #[serde(default)]
    pub created_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks a key: 1 to 255 printable ASCII characters.
pub fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// The fingerprint of a body.
pub fn fingerprint(body: &[u8]) -> String {
    format!(
        "{:016x}{:08x}",
        wyhash::wyhash(body, 0x1dea),
        crc32c::crc32c(body)
    )
}

/// Every key's entry, one file each, and the keys in flight.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    horizon: Duration,
    in_flight: Mutex<HashSet<String>>,
    /// When expired keys were last removed (s since the epoch): at most once a minute.
    pruned: std::sync::atomic::AtomicU64,
}

/// A key held in flight; released when dropped.
pub struct Held<'a> {
    store: &'a KeyStore,
    key: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.store.in_flight.lock() {
            f.remove(&self.key);
        }
    }
}

impl KeyStore {
    /// Opens (creating, mode 0700) the directory, removes the temp files a crash left (before
    /// anything can write: the caller holds the data dir), and forgets keys older than
    /// `horizon`.
    pub fn open(dir: &Path, horizon: Duration) -> Result<KeyStore, KeyError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let s = KeyStore {
            dir: dir.to_path_buf(),
            horizon,
            in_flight: Mutex::new(HashSet::new()),
            pruned: std::sync::atomic::AtomicU64::new(0),
        };
        s.remove(|e| e.file_name().to_string_lossy().ends_with(".tmp"))?;
        s.prune()?;
        Ok(s)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(
            "{:016x}{:08x}.json",
            wyhash::wyhash(key.as_bytes(), 0x6b),
            crc32c::crc32c(key.as_bytes())
        ))
    }

    /// Holds `key` for this request; None when another request holds it.
    pub fn hold(&self, key: &str) -> Option<Held<'_>> {
        let mut f = self.in_flight.lock().ok()?;
        f.insert(key.to_string()).then(|| Held {
            store: self,
            key: key.to_string(),
        })
    }

    /// Removes entries older than the horizon (by file time: cheap, and the entry's own time
    /// decides in [`KeyStore::get`] anyway). Never a temp file: it may be another shard's
    /// [`KeyStore::put`] in progress (removing one made that put's rename fail, and its batch
    /// answer 500); those a crash left are removed by [`KeyStore::open`].
    pub fn prune(&self) -> Result<usize, KeyError> {
        let now = SystemTime::now();
        self.remove(|e| {
            !e.file_name().to_string_lossy().ends_with(".tmp")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > self.horizon)
        })
    }

    /// Removes the files of the directory that `doomed` picks; how many.
    fn remove(&self, doomed: impl Fn(&std::fs::DirEntry) -> bool) -> Result<usize, KeyError> {
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let Ok(e) = e else { continue };
            if doomed(&e) {
                std::fs::remove_file(e.path()).map_err(io("remove", &e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// [`KeyStore::prune`] when the last one is a minute old.
    pub fn prune_now_and_then(&self) -> Result<(), KeyError> {
        use std::sync::atomic::Ordering;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.pruned.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .pruned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.prune()?;
        }
        Ok(())
    }

    /// The entry of `key`, if it is known and younger than the horizon.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, KeyError> {
        let path = self.path(key);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let entry: Option<Entry> = serde_json::from_slice(&text).ok();
        // By the entry's own time, not the file's: the same clock as now.
        let expired = entry.as_ref().is_some_and(|e| {
            now_ms().saturating_sub(e.created_ms) > self.horizon.as_millis() as u64
        });
        match entry {
            // Another key with the same file name (a hash collision) is not this key.
            Some(e) if e.key == key && !expired => Ok(Some(e)),
            _ => Ok(None),
        }
    }

    /// Writes `entry`; with `durable`, fsynced (file and directory) before returning.
    pub fn put(&self, entry: &Entry, durable: bool) -> Result<(), KeyError> {
        let mut entry = entry.clone();
        if entry.created_ms == 0 {
            entry.created_ms = now_ms();
        }
        let entry = &entry;
        let path = self.path(&entry.key);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(entry).map_err(|e| io("encode", &path)(e.into()))?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&text).map_err(io("write", &tmp))?;
            if durable {
                f.sync_all().map_err(io("fsync", &tmp))?;
            }
        }
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        if durable {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync", &self.dir))?;
        }
        Ok(())
    }
}

/// Finds how many of a batch's lines (a prefix) the log holds, record by record in offset
/// order from the entry's floor: the longest run of the batch's first lines found contiguous.
/// The batch's lines follow the floor closely (only what other connections appended while its
/// entry was fsynced comes in between); the scan stops when the whole batch is found, or
/// [`PrefixMatch::GIVE_UP`] records past the floor.
pub struct PrefixMatch<'a> {
    lines: &'a [&'a [u8]],
    best: usize,
    run: Option<usize>,
    seen: usize,
}

impl<'a> PrefixMatch<'a> {
    /// Records read past the floor before giving up.
    pub const GIVE_UP: usize = 200_000;

    pub fn new(lines: &'a [&'a [u8]]) -> Self {
        PrefixMatch {
            lines,
            best: 0,
            run: None,
            seen: 0,
        }
    }

    /// Takes the next record; false when nothing later can change the answer.
    pub fn push(&mut self, r: &[u8]) -> bool {
        let Some(first) = self.lines.first() else {
            return false;
        };
        self.seen += 1;
        self.run = match self.run {
            Some(n) if n < self.lines.len() && self.lines[n] == r => Some(n + 1),
            _ if r == *first => Some(1),
            _ => None,
        };
        if let Some(n) = self.run {
            self.best = self.best.max(n);
        }
        self.best < self.lines.len() && self.seen < Self::GIVE_UP
    }

    /// Lines found stored.
    pub fn stored(&self) -> usize {
        self.best
    }
}

/// [`PrefixMatch`] over a whole sequence.
pub fn stored_prefix<'a>(lines: &[&[u8]], records: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut m = PrefixMatch::new(lines);
    for r in records {
        if !m.push(r) {
            break;
        }
    }
    m.stored()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_expire_and_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let s = KeyStore::open(tmp.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(s.get("k1").unwrap(), None);
        let e = Entry {
            key: "k1".into(),
            fingerprint: fingerprint(b"body"),
            shard: 1,
            floor: 42,
            lines: 3,
            prior: 0,
            answer: None,
            created_ms: 1,
        };
        s.put(&e, true).unwrap();
        assert_eq!(
            s.get("k1").unwrap(),
            None,
            "created long ago: over the horizon"
        );
        let e = Entry { created_ms: 0, ..e };
        s.put(&e, true).unwrap();
        let got = s.get("k1").unwrap().unwrap();
        assert!(got.created_ms > 0);
        assert_eq!(
            Entry {
                created_ms: 0,
                ..got
            },
            e
        );
        assert_eq!(s.get("k2").unwrap(), None);
        let held = s.hold("k1").unwrap();
        assert!(s.hold("k1").is_none(), "a key is held once");
        drop(held);
        assert!(s.hold("k1").is_some());
        // Over the horizon: forgotten.
        let short = KeyStore::open(tmp.path(), Duration::from_millis(1)).unwrap_or_else(|_| {
            panic!("reopen");
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(short.get("k1").unwrap(), None);
        short.prune().unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        assert!(valid_key("order-42_ä".split('_').next().unwrap()));
        assert!(!valid_key("") && !valid_key("a b") && !valid_key(&"x".repeat(256)));
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }

    #[test]
    fn only_open_removes_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let leftover = tmp.path().join("0123.tmp");
        std::fs::write(&leftover, b"{").unwrap();
        let s = KeyStore::open(tmp.path(), Duration::from_millis(1)).unwrap();
        assert!(!leftover.exists(), "a crash's leftover, removed at open");
        let writing = tmp.path().join("4567.tmp");
        std::fs::write(&writing, b"{").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.prune().unwrap();
        assert!(writing.exists(), "maybe another shard's put in progress");
    }

    #[test]
    fn the_stored_prefix_is_the_longest_contiguous_run() {
        let lines: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        let recs = |v: Vec<&'static [u8]>| stored_prefix(&lines, v.into_iter());
        assert_eq!(recs(vec![]), 0);
        assert_eq!(recs(vec![b"x", b"a", b"b", b"c", b"y"]), 3);
        assert_eq!(recs(vec![b"x", b"a", b"b"]), 2);
        assert_eq!(recs(vec![b"a", b"x", b"a", b"b", b"z"]), 2);
        assert_eq!(recs(vec![b"b", b"c"]), 0);
        assert_eq!(recs(vec![b"a", b"a", b"b"]), 2);
    }
}
