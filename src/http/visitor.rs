//! Cookieless visitor ids for the pixel (Plausible's scheme): a `/p.gif` hit that carries no
//! `vid` gets one derived on the server, `SipHash-2-4(salt; site, client address, User-Agent)`
//! as 16 hex digits, so the tracking script needs no cookie and no storage.
//!
//! The salt is 128 random bits per UTC day, kept in `<data_dir>/tracker/salt-YYYY-MM-DD`
//! (mode 0600) so that every shard, and a restarted pixeld, derive the same id the same day.
//! When a day begins, the first shard that needs its salt writes it (temp file, fsync, then a
//! hard link, which exactly one writer wins; the others read the winner's) and removes every
//! older salt. Once yesterday's salt is deleted nobody, pixeld included, can recompute
//! yesterday's ids from an address and a User-Agent: ids neither link a reader across days nor
//! can be reversed by trying every IPv4 address. Each shard keeps its day's salt in memory
//! (no lock, no file access on a hit), and touches the directory only when the day changes.
//!
//! What this does not hide, and the README says: the log line of a pixel hit keeps `ip` and
//! `ua` (as every transport's lines do, for later geo and bot rules) for `log.retention`.

use std::cell::{Cell, RefCell};
use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use siphasher::sip::SipHasher24;
use thiserror::Error;

const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

/// The salt directory could not be used.
#[derive(Debug, Error)]
#[error("tracker salts: cannot {what} {}: {source}; pixeld needs a writable {} (data_dir)", path.display(), path.parent().map_or_else(|| path.display(), |p| p.display()))]
pub struct SaltError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SaltError {
    let path = path.to_path_buf();
    move |source| SaltError { what, path, source }
}

/// The UTC day (days since the epoch) of an instant in ns since the epoch.
pub fn day_of(now_ns: u64) -> i64 {
    (now_ns / NS_PER_DAY) as i64
}

/// `YYYY-MM-DD` of a day since the epoch.
fn date(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day * 86_400).map_or_else(
        |_| format!("day{day}"),
        |t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        },
    )
}

/// The directory of daily salts, shared by every shard.
#[derive(Debug)]
pub struct SaltDir {
    dir: PathBuf,
}

impl SaltDir {
    /// Opens (creating, mode 0700) the directory and removes every salt older than `today`
    /// and any temp file a crash left.
    pub fn open(dir: &Path, today: i64) -> Result<SaltDir, SaltError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict", dir))?;
        let d = SaltDir {
            dir: dir.to_path_buf(),
        };
        d.prune(today)?;
        Ok(d)
    }

    fn path(&self, day: i64) -> PathBuf {
        self.dir.join(format!("salt-{}", date(day)))
    }

    /// Removes salts of days before `day` and leftover temp files; returns how many.
    pub fn prune(&self, day: i64) -> Result<usize, SaltError> {
        let keep = format!("salt-{}", date(day));
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let e = e.map_err(io("list", &self.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let old = name.starts_with("salt-") && !name.contains(".tmp") && *name < *keep;
            if old || name.contains(".tmp") {
                std::fs::remove_file(e.path()).map_err(io("remove", &e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The salt of `day`: read, or made and written when this is the first to need it; older
    /// salts are removed when a new one is made.
    pub fn salt(&self, day: i64) -> Result<[u8; 16], SaltError> {
        let path = self.path(day);
        if let Some(s) = self.read(&path)? {
            return Ok(s);
        }
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let tmp = self.dir.join(format!(
            "salt-{}.tmp.{}.{:?}",
            date(day),
            std::process::id(),
            std::thread::current().id()
        ));
        let hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(format!("{hex}\n").as_bytes())
                .map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                std::fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("fsync", &self.dir))?;
                self.prune(day)?;
                Ok(salt)
            }
            // Another shard (or process) made it first: its salt is the day's.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self
                .read(&path)?
                .ok_or_else(|| io("read", &path)(std::io::ErrorKind::NotFound.into())),
            Err(e) => Err(io("link", &path)(e)),
        }
    }

    fn read(&self, path: &Path) -> Result<Option<[u8; 16]>, SaltError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", path)(e)),
        };
        let t = text.trim().as_bytes();
        let mut salt = [0u8; 16];
        let ok = t.len() == 32
            && salt.iter_mut().zip(t.chunks(2)).all(|(s, h)| {
                std::str::from_utf8(h)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map(|v| *s = v)
                    .is_some()
            });
        if !ok {
            return Err(io("read", path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not 32 hex digits; delete the file and pixeld makes a new salt",
            )));
        }
        Ok(Some(salt))
    }
}

/// The id of a visitor under `salt`: 16 hex digits. Each part is length-prefixed, so that no
/// two different (site, ip, ua) hash the same bytes.
pub fn derive(salt: &[u8; 16], site: &str, ip: &str, ua: &str) -> String {
    let (k0, k1) = salt.split_at(8);
    let key = |b: &[u8]| b.iter().fold(0u64, |k, &x| (k << 8) | u64::from(x));
    let mut h = SipHasher24::new_with_keys(key(k0), key(k1));
    for part in [site, ip, ua] {
        h.write_u64(part.len() as u64);
        h.write(part.as_bytes());
    }
    format!("{:016x}", h.finish())
}

/// One shard's view of the salts: today's in memory, the directory touched only when the day
/// changes.
#[derive(Debug)]
pub struct VisitorIds {
    dir: std::sync::Arc<SaltDir>,
    current: RefCell<Option<(i64, [u8; 16])>>,
    /// The last day for which a failure was reported (one message a day, not one a hit).
    reported: Cell<i64>,
}

impl VisitorIds {
    pub fn new(dir: std::sync::Arc<SaltDir>) -> VisitorIds {
        VisitorIds {
            dir,
            current: RefCell::new(None),
            reported: Cell::new(i64::MIN),
        }
    }

    /// The id of (site, ip, ua) at `now_ns`; `None` when the day's salt cannot be had (the
    /// cause is printed once a day; the caller counts the hit as stored without an id).
    pub fn derive(&self, now_ns: u64, site: &str, ip: &str, ua: &str) -> Option<String> {
        let day = day_of(now_ns);
        let cached = *self.current.borrow();
        let salt = match cached {
            Some((d, s)) if d == day => s,
            _ => match self.dir.salt(day) {
                Ok(s) => {
                    *self.current.borrow_mut() = Some((day, s));
                    s
                }
                Err(e) => {
                    if self.reported.replace(day) != day {
                        eprintln!("pixeld: {e}; pixel hits without a vid are stored without one until it works");
                    }
                    return None;
                }
            },
        };
        Some(derive(&salt, site, ip, ua))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 20_000;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn same_day_same_id_next_day_another_and_old_salts_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tracker");
        let salts = std::sync::Arc::new(SaltDir::open(&dir, DAY).unwrap());
        // Two shards, one salt: the same visitor gets the same id on both.
        let (a, b) = (
            VisitorIds::new(salts.clone()),
            VisitorIds::new(salts.clone()),
        );
        let t = DAY as u64 * NS_PER_DAY + 5;
        let id = a.derive(t, "ex.com", "192.0.2.1", "UA").unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(
            b.derive(t + 1000, "ex.com", "192.0.2.1", "UA"),
            Some(id.clone())
        );
        // Another site, address or agent: another visitor.
        for (s, i, u) in [
            ("ex.org", "192.0.2.1", "UA"),
            ("ex.com", "192.0.2.2", "UA"),
            ("ex.com", "192.0.2.1", "UA2"),
            ("ex.com192.0.2.1", "", "UA"),
        ] {
            assert_ne!(a.derive(t, s, i, u), Some(id.clone()), "{s} {i} {u}");
        }
        assert_eq!(names(&dir), vec![format!("salt-{}", date(DAY))]);
        let mode = std::fs::metadata(dir.join(format!("salt-{}", date(DAY))))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart reads the same salt.
        let again = VisitorIds::new(std::sync::Arc::new(SaltDir::open(&dir, DAY).unwrap()));
        assert_eq!(
            again.derive(t, "ex.com", "192.0.2.1", "UA"),
            Some(id.clone())
        );
        // The next day: another id, and yesterday's salt is gone.
        let next = a
            .derive(t + NS_PER_DAY, "ex.com", "192.0.2.1", "UA")
            .unwrap();
        assert_ne!(next, id);
        assert_eq!(names(&dir), vec![format!("salt-{}", date(DAY + 1))]);
        // The other shard moves to the new day with the same salt.
        assert_eq!(
            b.derive(t + NS_PER_DAY, "ex.com", "192.0.2.1", "UA"),
            Some(next)
        );
    }

    #[test]
    fn open_removes_stale_salts_and_temp_files_and_a_damaged_salt_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tracker");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("salt-{}", date(DAY - 3))), "00".repeat(16)).unwrap();
        std::fs::write(dir.join(format!("salt-{}.tmp.1.x", date(DAY))), "x").unwrap();
        let salts = SaltDir::open(&dir, DAY).unwrap();
        assert!(names(&dir).is_empty());
        std::fs::write(dir.join(format!("salt-{}", date(DAY))), "nonsense\n").unwrap();
        let e = salts.salt(DAY).unwrap_err().to_string();
        assert!(
            e.contains("not 32 hex digits") && e.contains("salt-"),
            "{e}"
        );
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(day_of(86_400 * 1_000_000_000 - 1), 0);
    }
}
