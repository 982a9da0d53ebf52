//! A file the user supplies and may replace while pixeld runs — the country database
//! (`geo`) and the list of bot networks (`networks`) — read into memory and watched.
//!
//! One [`Watched`] per file per process holds what was last read from it.
//! [`Watched::reload_if_changed`], called by a background thread ([`watch`]) every
//! `geo.reload_interval`, reads the file again when its size, time or inode changed, has the
//! [`Load`] implementation check it, and only then swaps it in. A missing or damaged file is
//! reported (log, `pixeld validate` and `/metrics`) and what was read before, or nothing, stays
//! in use: ingest never stops for it. Readers (one per shard's parser) keep their own `Arc` of
//! the value and refresh it when the generation number moves — one relaxed atomic load per
//! use, no lock on the hot path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What a watched file is read into.
pub trait Load: Sized + Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;
    /// What pixeld does while no version of the file could be read (for messages:
    /// "countries are (unknown)").
    const WITHOUT: &'static str;
    /// Reads a new version from what reading `path` gave: the value, what it is (a
    /// database's type, a count of networks) and when it was built (seconds since the epoch).
    fn load(path: &Path, read: std::io::Result<Vec<u8>>) -> Result<Loaded<Self>, Self::Error>;
}

/// A value read from a file, with what `/metrics` and `pixeld validate` say of it.
pub struct Loaded<T> {
    pub value: T,
    pub kind: String,
    pub build_epoch: u64,
}

/// The identity of the file a value was read from, to tell when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

/// What `/metrics` and `pixeld validate` say about a watched file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// What is in use ([`Loaded::kind`]), when something is.
    pub loaded: Option<String>,
    /// Its build time, seconds since the epoch.
    pub build_epoch: u64,
    /// Successful loads and failed attempts since start.
    pub loads: u64,
    pub failures: u64,
    /// The last failure, while the file is still the one that failed.
    pub error: Option<String>,
}

struct State<T> {
    value: Option<Arc<T>>,
    /// The file as last looked at (loaded or failed), so a bad file is reported once.
    seen: Option<Stamp>,
    status: Status,
}

/// One watched file of the process, shared by every shard's parser.
pub struct Watched<T> {
    path: PathBuf,
    state: Mutex<State<T>>,
    /// Bumped at every successful load: readers refresh their reference when it moves.
    generation: AtomicU64,
}

impl<T: Load> Watched<T> {
    /// The file at `path` read now; a failure is kept in its status (see
    /// [`Watched::status`]) and the file is tried again at the next
    /// [`Watched::reload_if_changed`].
    pub fn open(path: &Path) -> Arc<Watched<T>> {
        let w = Arc::new(Watched {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                value: None,
                seen: None,
                status: Status::default(),
            }),
            generation: AtomicU64::new(0),
        });
        // Whatever happens is in the status.
        let _ = w.reload_if_changed();
        w
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn status(&self) -> Status {
        self.state().status.clone()
    }

    /// Reads the file again if it is not the one last looked at: `None` when unchanged,
    /// else whether the new version is now in use. A failure leaves the previous one in use.
    pub fn reload_if_changed(&self) -> Option<Result<(), T::Error>> {
        let now = stamp(&self.path);
        let mut st = self.state();
        let changed = match &now {
            Ok(s) => st.seen != Some(*s),
            // A file that went away: report it once, keep what is loaded.
            Err(_) => st.seen.is_some() || st.status.loads + st.status.failures == 0,
        };
        if !changed {
            return None;
        }
        st.seen = now.as_ref().ok().copied();
        let read = now.and_then(|_| std::fs::read(&self.path));
        Some(match T::load(&self.path, read) {
            Ok(l) => {
                st.status.loaded = Some(l.kind);
                st.status.build_epoch = l.build_epoch;
                st.status.loads += 1;
                st.status.error = None;
                st.value = Some(Arc::new(l.value));
                self.generation.fetch_add(1, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                st.status.failures += 1;
                st.status.error = Some(e.to_string());
                Err(e)
            }
        })
    }

    /// The generation of what is in use (cheap: what a reader compares with its own).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// What is in use and its generation.
    pub fn current(&self) -> (u64, Option<Arc<T>>) {
        let st = self.state();
        (self.generation.load(Ordering::Acquire), st.value.clone())
    }

    /// One line for the log: what is in use, or why nothing is.
    pub fn describe(&self) -> String {
        let st = self.status();
        match (&st.loaded, &st.error) {
            (_, Some(e)) => format!(
                "{e}{}",
                if st.loaded.is_some() {
                    "; the version read before stays in use".to_string()
                } else {
                    format!("; {} until it can be read", T::WITHOUT)
                }
            ),
            (Some(kind), None) => format!(
                "using {kind} from {} (built {})",
                self.path.display(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(st.build_epoch)
                )
            ),
            (None, None) => format!("{} not read yet", self.path.display()),
        }
    }
}

/// Looks at `w`'s file every `every` on a thread of its own (named `pixeld-<name>`), reloading
/// it when it changed and saying so on stderr as `pixeld: <name>: …`; ends when `w` is dropped.
pub fn watch<T: Load>(
    w: &Arc<Watched<T>>,
    name: &'static str,
    every: std::time::Duration,
) -> std::io::Result<()> {
    let weak = Arc::downgrade(w);
    std::thread::Builder::new()
        .name(format!("pixeld-{name}"))
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(w) = weak.upgrade() else { return };
            if w.reload_if_changed().is_some() {
                eprintln!("pixeld: {name}: {}", w.describe());
            }
        })
        .map(drop)
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watched({})", self.path.display())
    }
}

/// The configured file, if any: what an event configuration carries. Two handles are equal
/// when they name the same file (what the configuration says, not what it holds).
pub struct Shared<T>(Option<Arc<Watched<T>>>);

impl<T: Load> Shared<T> {
    /// No file configured.
    pub fn none() -> Shared<T> {
        Shared(None)
    }
    pub fn new(w: Arc<Watched<T>>) -> Shared<T> {
        Shared(Some(w))
    }
    pub fn db(&self) -> Option<&Arc<Watched<T>>> {
        self.0.as_ref()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared(None)
    }
}

impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        self.0.as_ref().map(|d| &d.path) == other.0.as_ref().map(|d| &d.path)
    }
}
impl<T> Eq for Shared<T> {}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("None"),
            Some(w) => write!(f, "{:?}", w.path),
        }
    }
}

/// One reader's reference to what a [`Shared`] file holds, refreshed when it changes.
pub struct View<T> {
    w: Option<Arc<Watched<T>>>,
    generation: u64,
    value: Option<Arc<T>>,
}

impl<T: Load> View<T> {
    pub fn new(s: &Shared<T>) -> View<T> {
        View {
            w: s.0.clone(),
            generation: 0,
            value: None,
        }
    }

    /// Whether a file is configured (read or not).
    pub fn configured(&self) -> bool {
        self.w.is_some()
    }

    /// What is in use now, and whether it changed since the last call (a reader's caches
    /// of it are then stale).
    pub fn get(&mut self) -> (Option<&T>, bool) {
        let Some(w) = &self.w else {
            return (None, false);
        };
        let changed = w.generation() != self.generation;
        if changed {
            (self.generation, self.value) = w.current();
        }
        (self.value.as_deref(), changed)
    }
}

impl<T> Default for View<T> {
    fn default() -> Self {
        View {
            w: None,
            generation: 0,
            value: None,
        }
    }
}

impl<T> fmt::Debug for View<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View(generation {})", self.generation)
    }
}
