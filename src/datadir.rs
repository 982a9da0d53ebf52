//! The data dir as a whole: its exclusive lock (`<data_dir>/.lock`, holding the pid), so that
//! two pixeld processes — `serve`, `import` — never append to the same log, and the private
//! file modes of everything created in it. Both the server and the offline tools take it from
//! here, so neither depends on the other.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {}: {source}", path.display())]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {} is in use by another pixeld process{holder}; stop it first or use another --data-dir", path.display())]
    Locked { path: PathBuf, holder: String },
}

/// Makes every directory and file this process creates private to its user (0700 / 0600):
/// the log holds visitors' addresses and ids. systemd's `UMask=0077` does the same for the
/// service; this covers `pixeld serve` and `import` started by hand.
#[allow(unsafe_code)]
pub fn restrict_file_modes() {
    // SAFETY: umask only replaces the process's file-mode creation mask; it cannot fail and
    // touches no memory of ours.
    unsafe {
        libc::umask(0o077);
    }
}

/// An exclusive lock on a data dir, held for the life of the process (or of a tool run).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates the data dir if needed and takes its lock, so that two pixeld processes (or
/// `serve` and `import`) never append to the same log.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let err = |source| DataDirError::Unusable {
        path: dir.to_path_buf(),
        source,
    };
    restrict_file_modes();
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map_or_else(String::new, |pid| format!(" (pid {pid})"));
            return Err(DataDirError::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    write!(file, "{}", std::process::id()).map_err(err)?;
    Ok(DataDirLock { _file: file })
}
