//! Small facts from the operating system that every layer needs: the wall clock, the CPUs this
//! process may run on, and glommio errors turned back into OS errors. They live here, at the
//! bottom of the crate, so that neither the log nor the config nor the metrics has to import a
//! layer above it to ask.

use std::io;

/// Converts a glommio error to an `io::Error` that keeps the OS error code (glommio's own
/// conversion keeps only the kind), so that ENOSPC is recognised. Paths are added by
/// [`crate::log::Error::Io`].
pub fn os_error<T>(e: glommio::GlommioError<T>) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(e),
    }
}

/// Current wall-clock time in ns since the Unix epoch (receive timestamps).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    let mut cpus = affinity_cpus();
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus = (0..n).collect();
    }
    cpus
}

#[allow(unsafe_code)]
fn affinity_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bitmask for which all-zero is a valid value;
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it, and CPU_ISSET
    // only reads it, for indexes below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// RFC 3339 (UTC, whole minutes: `2026-11-22T01:39:00Z`) of a minute since the epoch.
pub fn minute_rfc3339(minute: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(minute * 60) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:00Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => String::new(),
    }
}
