//! Start-up checks that run before any shard starts, so that a machine or a setting pixeld
//! cannot work with is reported as one line naming the cause and the fix — not as an error
//! from deep inside glommio after minutes of log recovery.
//!
//! It owns four checks, in the order an operator would fix them: the locked-memory limit
//! (glommio's io_uring rings are locked memory), io_uring itself (kernel version, the
//! `kernel.io_uring_disabled` sysctl, seccomp filters, and the opcodes pixeld's I/O needs,
//! probed with the `io-uring` crate on a throw-away ring), the data dir (created if missing,
//! then proven writable with a probe file), and the listen addresses (each bound once, exclusively, then
//! released). It must not keep anything open:
//! the shards bind and open for themselves afterwards. A race in between (another process
//! taking a port) is still reported by the shard, only later.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Why pixeld cannot start on this machine or with this config; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("the locked-memory limit is {have} KiB, and each shard's io_uring rings need at least {need} KiB: raise it (`ulimit -l {need}` or more in the shell; `LimitMEMLOCK=` in the systemd unit, which ships with 64M)")]
    MemLock { have: u64, need: u64 },
    #[error("kernel {release} is too old: pixeld's io_uring I/O (glommio) needs Linux {}.{} or newer; upgrade the kernel (Debian 12 ships 6.1)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { release: String },
    #[error("io_uring is not available: {cause}; {fix}")]
    IoUring { cause: String, fix: &'static str },
    #[error("the kernel's io_uring lacks operations pixeld needs ({missing}); upgrade the kernel to Linux {}.{} or newer", MIN_KERNEL.0, MIN_KERNEL.1)]
    IoUringOpcodes { missing: String },
    #[error("data dir {} is not usable by this process (uid {uid}): {cause}; {fix}", path.display())]
    DataDir {
        path: PathBuf,
        uid: u32,
        cause: String,
        fix: String,
    },
    #[error("cannot listen on {what} {addr}: {cause}; {fix}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        cause: String,
        fix: String,
    },
}

/// glommio refuses to start an executor under this locked-memory limit (its io_uring rings).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// glommio 0.9's documented minimum kernel.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// The machine and the data dir; the first failure is returned.
pub fn check_system(cfg: &Config) -> Result<(), PreflightError> {
    check_memlock(memlock_limit())?;
    check_kernel(&kernel_release())?;
    check_io_uring()?;
    check_data_dir(&cfg.data_dir)
}

/// The listen addresses. Run after the data dir is locked, so that a second pixeld on the same
/// data dir is told so rather than that its ports are taken.
pub fn check_ports(cfg: &Config) -> Result<(), PreflightError> {
    check_listen("UDP", cfg.udp, bind_udp)?;
    check_listen("TCP", cfg.tcp, bind_tcp)?;
    check_listen("HTTP", cfg.http, bind_tcp)?;
    Ok(())
}

fn check_memlock(limit: Option<u64>) -> Result<(), PreflightError> {
    match limit {
        Some(have) if have < MIN_MEMLOCK => Err(PreflightError::MemLock {
            have: have / 1024,
            need: MIN_MEMLOCK / 1024,
        }),
        _ => Ok(()),
    }
}

#[allow(unsafe_code)]
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `r`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `major.minor` of a release string such as `6.1.0-28-amd64`; an unreadable one passes (the
/// io_uring probe still runs).
fn check_kernel(release: &str) -> Result<(), PreflightError> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
        if (major, minor) < MIN_KERNEL {
            return Err(PreflightError::KernelTooOld {
                release: release.to_string(),
            });
        }
    }
    Ok(())
}

/// The io_uring operations pixeld's shards issue through glommio: DMA file reads and writes,
/// fdatasync, open/close/statx of segment files, fallocate, socket accept/recv/send, polls,
/// timeouts and cancellation.
const NEEDED_OPCODES: [(u8, &str); 13] = [
    (io_uring::opcode::Read::CODE, "read"),
    (io_uring::opcode::Write::CODE, "write"),
    (io_uring::opcode::Fsync::CODE, "fsync"),
    (io_uring::opcode::OpenAt::CODE, "openat"),
    (io_uring::opcode::Close::CODE, "close"),
    (io_uring::opcode::Statx::CODE, "statx"),
    (io_uring::opcode::Fallocate::CODE, "fallocate"),
    (io_uring::opcode::Accept::CODE, "accept"),
    (io_uring::opcode::Recv::CODE, "recv"),
    (io_uring::opcode::Send::CODE, "send"),
    (io_uring::opcode::PollAdd::CODE, "poll"),
    (io_uring::opcode::Timeout::CODE, "timeout"),
    (io_uring::opcode::AsyncCancel::CODE, "cancel"),
];

/// Sets up a tiny ring and asks the kernel which operations it supports.
fn check_io_uring() -> Result<(), PreflightError> {
    let ring = match io_uring::IoUring::new(2) {
        Ok(r) => r,
        Err(e) => return Err(io_uring_error(&e, io_uring_disabled_sysctl())),
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        // IORING_REGISTER_PROBE exists since 5.6; older kernels are refused above.
        return Ok(());
    }
    let missing: Vec<&str> = NEEDED_OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::IoUringOpcodes {
            missing: missing.join(", "),
        })
    }
}

fn io_uring_disabled_sysctl() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Maps a failed `io_uring_setup` to its likely cause and the fix.
fn io_uring_error(e: &io::Error, disabled: Option<u8>) -> PreflightError {
    let cause = format!("io_uring_setup failed: {e}");
    let fix = match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(2)) => {
            "the sysctl kernel.io_uring_disabled is 2: set it to 0 (`sysctl -w kernel.io_uring_disabled=0`, and in /etc/sysctl.d/ to keep it)"
        }
        (Some(libc::EPERM), Some(1)) => {
            "the sysctl kernel.io_uring_disabled is 1 (only members of kernel.io_uring_group may use it): set it to 0, or add pixeld's user to that group"
        }
        (Some(libc::EPERM | libc::EACCES), _) => {
            "a security policy forbids it (a seccomp filter such as a container runtime's default profile, or an LSM): allow the io_uring_setup, io_uring_enter and io_uring_register system calls (systemd's @system-service set includes them)"
        }
        (Some(libc::ENOSYS), _) => {
            "the kernel was built without io_uring (CONFIG_IO_URING) or a seccomp filter hides it: use a kernel with io_uring, or allow the io_uring_* system calls"
        }
        (Some(libc::ENOMEM), _) => {
            "the locked-memory limit is too low for the rings: raise it (`ulimit -l`, or `LimitMEMLOCK=` in the systemd unit)"
        }
        _ => "check that the kernel supports io_uring and that no policy forbids it",
    };
    PreflightError::IoUring { cause, fix }
}

/// Creates the data dir when missing and proves it writable with a probe file.
fn check_data_dir(dir: &Path) -> Result<(), PreflightError> {
    let probe = dir.join(".pixeld-write-probe");
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        std::fs::write(&probe, b"probe")?;
        std::fs::remove_file(&probe)
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(data_dir_error(dir, &e, current_uid())),
    }
}

#[allow(unsafe_code)]
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn data_dir_error(dir: &Path, e: &io::Error, uid: u32) -> PreflightError {
    let shown = dir.display();
    let fix = match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => format!(
            "give the directory to the user that runs pixeld (`install -d -o <user> {shown}` or `chown -R <user> {shown}`), or choose another with `data_dir =` / --data-dir (under systemd, StateDirectory=pixeld provides /var/lib/pixeld)"
        ),
        Some(libc::EROFS) => format!(
            "{shown} is on a read-only filesystem (under systemd's ProtectSystem=strict only StateDirectory= paths are writable): use /var/lib/pixeld or add the path to ReadWritePaths="
        ),
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "the filesystem is full: free space, or lower log.retention / log.retention_bytes".to_string()
        }
        Some(libc::ENOTDIR | libc::EEXIST) => {
            format!("a file is in the way of {shown}: move it, or choose another data dir")
        }
        _ => "choose a data dir on a local, writable filesystem (`data_dir =` / --data-dir)".to_string(),
    };
    PreflightError::DataDir {
        path: dir.to_path_buf(),
        uid,
        cause: e.to_string(),
        fix,
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<()> {
    bind(addr, socket2::Type::DGRAM, socket2::Protocol::UDP)
}

fn bind_tcp(addr: SocketAddr) -> io::Result<()> {
    bind(addr, socket2::Type::STREAM, socket2::Protocol::TCP)
}

/// Binds (and, for TCP, listens on) `addr`, then closes it. Deliberately *without*
/// `SO_REUSEPORT`, which the shards use: with it, a second pixeld of the same user (another
/// data dir) would bind the same port too and silently take half of the traffic; without it,
/// any socket already on the port — that one included — makes this bind fail.
fn bind(addr: SocketAddr, ty: socket2::Type, proto: socket2::Protocol) -> io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(proto))?;
    if ty == socket2::Type::STREAM {
        // Only so that connections of a previous run in TIME_WAIT do not count as "in use".
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    if ty == socket2::Type::STREAM {
        s.listen(1)?;
    }
    Ok(())
}

fn check_listen(
    what: &'static str,
    addr: SocketAddr,
    bind: fn(SocketAddr) -> io::Result<()>,
) -> Result<(), PreflightError> {
    match bind(addr) {
        Ok(()) => Ok(()),
        Err(e) => Err(listen_error(what, addr, &e)),
    }
}

fn listen_error(what: &'static str, addr: SocketAddr, e: &io::Error) -> PreflightError {
    let key = match what {
        "UDP" => "listen.udp / --udp",
        "TCP" => "listen.tcp / --tcp",
        _ => "listen.http / --http",
    };
    let fix = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            "another process listens there (`ss -lnp 'sport = :{}'` shows it): stop it, or move pixeld with {key}",
            addr.port()
        ),
        Some(libc::EADDRNOTAVAIL) => format!(
            "{} is not an address of this machine: use one it has (`ip -br addr`), 0.0.0.0 or 127.0.0.1, in {key}",
            addr.ip()
        ),
        Some(libc::EACCES) => format!(
            "port {} is privileged (< 1024): use a port ≥ 1024 in {key}, or grant CAP_NET_BIND_SERVICE",
            addr.port()
        ),
        _ => format!("check {key}"),
    };
    PreflightError::Listen {
        what,
        addr,
        cause: e.to_string(),
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_below_the_minimum_names_the_limit_to_set() {
        assert!(check_memlock(None).is_ok());
        assert!(check_memlock(Some(MIN_MEMLOCK)).is_ok());
        let e = check_memlock(Some(64 * 1024)).unwrap_err().to_string();
        assert!(e.contains("64 KiB") && e.contains("LimitMEMLOCK="), "{e}");
    }

    #[test]
    fn kernel_versions_before_5_8_are_refused() {
        for ok in [
            "6.1.0-28-amd64",
            "5.8.0",
            "5.15.0-91-generic",
            "6.18.44-fc",
            "",
            "x",
        ] {
            assert!(check_kernel(ok).is_ok(), "{ok}");
        }
        for old in ["5.4.0-150-generic", "4.19.0-27-amd64", "3.10.0"] {
            let e = check_kernel(old).unwrap_err().to_string();
            assert!(e.contains(old) && e.contains("5.8"), "{e}");
        }
    }

    #[test]
    fn io_uring_failures_name_the_sysctl_or_the_policy() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let e = io_uring_error(&eperm, Some(2)).to_string();
        assert!(e.contains("kernel.io_uring_disabled is 2"), "{e}");
        let e = io_uring_error(&eperm, Some(0)).to_string();
        assert!(e.contains("seccomp"), "{e}");
        let e = io_uring_error(&io::Error::from_raw_os_error(libc::ENOSYS), None).to_string();
        assert!(e.contains("CONFIG_IO_URING"), "{e}");
    }

    #[test]
    fn this_machine_passes_the_io_uring_probe() {
        // The test suite itself runs pixeld on io_uring; a failure here names why it cannot.
        check_io_uring().unwrap();
    }

    #[test]
    fn unusable_data_dirs_are_named_with_a_fix() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_data_dir(&tmp.path().join("a/b")).is_ok());
        assert!(tmp.path().join("a/b").is_dir());
        assert!(!tmp.path().join("a/b/.pixeld-write-probe").exists());
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        let e = check_data_dir(&tmp.path().join("file/data"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("file/data") && e.contains("data dir"), "{e}");
        let e = data_dir_error(
            Path::new("/x"),
            &io::Error::from_raw_os_error(libc::EACCES),
            1000,
        )
        .to_string();
        assert!(e.contains("uid 1000") && e.contains("install -d -o"), "{e}");
    }

    #[test]
    fn a_port_in_use_is_named_with_the_key_to_change() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let e = check_listen("HTTP", addr, bind_tcp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&addr.to_string()) && e.contains("listen.http / --http"),
            "{e}"
        );
        drop(busy);
        assert!(check_listen("HTTP", addr, bind_tcp).is_ok());
    }
}
