//! Named consumers: their committed offsets per shard, stored durably under
//! `<data_dir>/consumers/<name>.json`, and the retention pins they hold.
//!
//! A consumer reads the log by offset and commits the next offset it wants per shard (Kafka's
//! meaning: every record below it is processed). The store is plain library code with a
//! blocking API — the HTTP handlers call it from glommio's blocking pool, and the Kafka export
//! uses it from its own thread as the built-in consumer `kafka-export` — so it must never run on a shard's
//! executor thread directly: a commit fsyncs. A commit returns only after the consumer's file
//! is replaced atomically (temp file, fdatasync, rename, directory fsync), so an acknowledged
//! commit survives kill -9 and power loss. Commits are serialised by one I/O mutex (two shards
//! may take PUTs for the same consumer at once); the in-memory state has its own mutex, held
//! only for map operations, so `/metrics` and lag reads never wait behind an fsync. None of
//! this is on the ingest path.
//!
//! Retention: a consumer with `retention_pin` keeps the segments it has not read — on a shard
//! where it has committed nothing, all of them — by lowering that shard's [`RetentionPin`],
//! which the shard's flusher reads (see `log::retention`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::log::retention::RetentionPin;

/// Longest consumer name.
pub const MAX_NAME_LEN: usize = 64;
/// The store's directory under the data dir.
pub const DIR_NAME: &str = "consumers";
/// Version of the consumer file format.
const FILE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("consumer name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("shard {shard} does not exist (shards are 0..{shards})")]
    UnknownShard { shard: usize, shards: usize },
    #[error("no consumer named {0:?}")]
    NotFound(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a consumer file ({reason}); fix or delete it, then restart", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConsumerError + '_ {
    move |source| ConsumerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One consumer, as stored and as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub version: u32,
    pub name: String,
    /// Whether retention keeps the segments this consumer has not read.
    pub retention_pin: bool,
    /// Per shard: the next offset to read (every record below it is processed).
    pub offsets: BTreeMap<usize, u64>,
    /// When it last committed (ns since the epoch).
    pub updated_ns: u64,
}

/// Checks a consumer name: 1–64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`
/// (it becomes a file name).
pub fn validate_name(name: &str) -> Result<(), ConsumerError> {
    let bad = |reason| {
        Err(ConsumerError::InvalidName {
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Every named consumer of a data dir.
#[derive(Debug)]
pub struct ConsumerStore {
    dir: PathBuf,
    shards: usize,
    state: Mutex<HashMap<String, Consumer>>,
    /// Serialises file writes, so that the file written last holds the state installed last.
    io: Mutex<()>,
    pins: Vec<RetentionPin>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated (each update is one
    // insert or remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerStore {
    /// Opens (creating it if needed) `<data_dir>/consumers/` and loads every consumer; a
    /// file that does not parse is an error naming it (silently dropping it could drop a
    /// retention pin). Leftover temp files of an interrupted commit are removed.
    pub fn open(data_dir: &Path, shards: usize) -> Result<Self, ConsumerError> {
        let dir = data_dir.join(DIR_NAME);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            sync_dir(data_dir)?;
        }
        let mut consumers = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let corrupt = |reason: String| ConsumerError::Corrupt {
                path: path.clone(),
                reason,
            };
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let c: Consumer = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if c.name != stem || c.version != FILE_VERSION {
                return Err(corrupt(format!(
                    "holds consumer {:?} version {}, expected {stem:?} version {FILE_VERSION}",
                    c.name, c.version
                )));
            }
            consumers.insert(c.name.clone(), c);
        }
        let store = ConsumerStore {
            dir,
            shards,
            state: Mutex::new(consumers),
            io: Mutex::new(()),
            pins: (0..shards).map(|_| RetentionPin::default()).collect(),
        };
        store.update_pins(&lock(&store.state));
        Ok(store)
    }

    /// The retention pin of `shard`, to give to its log (a shared handle).
    pub fn pin(&self, shard: usize) -> RetentionPin {
        self.pins.get(shard).cloned().unwrap_or_default()
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn get(&self, name: &str) -> Option<Consumer> {
        lock(&self.state).get(name).cloned()
    }

    /// Every consumer, by name.
    pub fn list(&self) -> Vec<Consumer> {
        let mut v: Vec<Consumer> = lock(&self.state).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Commits `offsets` (shard, next offset to read) for `name`, creating the consumer if
    /// needed, and sets its `retention_pin` when given (a new consumer is unpinned). Returns
    /// the consumer once its file is durable.
    pub fn commit(
        &self,
        name: &str,
        offsets: &[(usize, u64)],
        retention_pin: Option<bool>,
    ) -> Result<Consumer, ConsumerError> {
        validate_name(name)?;
        if let Some(&(shard, _)) = offsets.iter().find(|(s, _)| *s >= self.shards) {
            return Err(ConsumerError::UnknownShard {
                shard,
                shards: self.shards,
            });
        }
        let _io = lock(&self.io);
        let mut c = self.get(name).unwrap_or_else(|| Consumer {
            version: FILE_VERSION,
            name: name.to_string(),
            retention_pin: false,
            offsets: BTreeMap::new(),
            updated_ns: 0,
        });
        for &(shard, offset) in offsets {
            c.offsets.insert(shard, offset);
        }
        if let Some(p) = retention_pin {
            c.retention_pin = p;
        }
        c.updated_ns = crate::sys::now_ns();
        self.write_file(&c)?;
        let mut state = lock(&self.state);
        state.insert(c.name.clone(), c.clone());
        self.update_pins(&state);
        Ok(c)
    }

    /// Removes a consumer (and its pin). NotFound when there is none.
    pub fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        validate_name(name)?;
        let _io = lock(&self.io);
        if self.get(name).is_none() {
            return Err(ConsumerError::NotFound(name.to_string()));
        }
        let path = self.dir.join(format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        sync_dir(&self.dir)?;
        let mut state = lock(&self.state);
        state.remove(name);
        self.update_pins(&state);
        Ok(())
    }

    fn write_file(&self, c: &Consumer) -> Result<(), ConsumerError> {
        let path = self.dir.join(format!("{}.json", c.name));
        let tmp = self.dir.join(format!("{}.json.tmp", c.name));
        let mut bytes = serde_json::to_vec_pretty(c).map_err(|e| ConsumerError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)
    }

    /// Recomputes every shard's pin: the lowest committed offset of the pinned consumers (0
    /// where a pinned consumer has committed nothing on that shard).
    fn update_pins(&self, state: &HashMap<String, Consumer>) {
        for (shard, pin) in self.pins.iter().enumerate() {
            let floor = state
                .values()
                .filter(|c| c.retention_pin)
                .map(|c| c.offsets.get(&shard).copied().unwrap_or(0))
                .min();
            pin.set(floor);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), ConsumerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dash-board_1.v2", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "..",
            "a\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commits_survive_reopen_and_set_pins() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConsumerStore::open(dir.path(), 2).unwrap();
        assert_eq!(s.pin(0).get(), None);
        s.commit("a", &[(0, 10)], None).unwrap();
        assert_eq!(s.pin(0).get(), None, "unpinned consumers hold nothing");
        s.commit("b", &[(0, 7)], Some(true)).unwrap();
        assert_eq!((s.pin(0).get(), s.pin(1).get()), (Some(7), Some(0)));
        s.commit("b", &[(1, 3), (0, 12)], None).unwrap();
        assert_eq!((s.pin(0).get(), s.pin(1).get()), (Some(12), Some(3)));
        assert!(matches!(
            s.commit("b", &[(2, 1)], None),
            Err(ConsumerError::UnknownShard { shard: 2, .. })
        ));
        std::fs::write(dir.path().join("consumers/b.json.tmp"), b"half").unwrap();
        drop(s);
        let s = ConsumerStore::open(dir.path(), 2).unwrap();
        assert_eq!(s.get("a").unwrap().offsets, BTreeMap::from([(0, 10)]));
        let b = s.get("b").unwrap();
        assert!(b.retention_pin);
        assert_eq!(b.offsets, BTreeMap::from([(0, 12), (1, 3)]));
        assert_eq!((s.pin(0).get(), s.pin(1).get()), (Some(12), Some(3)));
        assert!(!dir.path().join("consumers/b.json.tmp").exists());
        s.delete("b").unwrap();
        assert_eq!(s.pin(0).get(), None);
        assert!(matches!(s.delete("b"), Err(ConsumerError::NotFound(_))));
        assert_eq!(s.list().len(), 1);
        std::fs::write(dir.path().join("consumers/c.json"), b"{").unwrap();
        assert!(matches!(
            ConsumerStore::open(dir.path(), 2),
            Err(ConsumerError::Corrupt { .. })
        ));
    }
}
