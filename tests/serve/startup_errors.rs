//! `pixeld serve` on a machine or with a setting it cannot work with fails at once with one
//! line naming the cause and the fix, and a non-zero exit: a port another process holds, a
//! data dir this user cannot write, io_uring forbidden (a real seccomp filter installed on the
//! child process), and the too-low locked-memory limit (in `cli.rs`).

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common;

fn serve_cmd(bin: &str, data: &Path, udp: u16, tcp: u16, http: u16) -> Command {
    let mut c = Command::new(bin);
    c.args(["serve", "--shards", "1", "--data-dir"])
        .arg(data)
        .args(["--udp", &format!("127.0.0.1:{udp}")])
        .args(["--tcp", &format!("127.0.0.1:{tcp}")])
        .args(["--http", &format!("127.0.0.1:{http}")]);
    c
}

fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Exit 1 and exactly one stderr line, which is returned.
fn one_error_line(out: &Output) -> String {
    let lines = error_lines(out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    assert_eq!(lines.len(), 1, "expected one line: {lines:#?}");
    assert!(lines[0].starts_with("pixeld: error: "), "{lines:#?}");
    lines[0].clone()
}

#[test]
fn ports_held_by_another_process_are_named_before_recovery_starts() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let busy_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_http = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, http, udp) = (
        busy_tcp.local_addr().unwrap().port(),
        busy_http.local_addr().unwrap().port(),
        busy_udp.local_addr().unwrap().port(),
    );
    let free = |kind: &str| match kind {
        "udp" => common::free_udp_port(),
        _ => common::free_tcp_port(),
    };
    for (what, key, u, t, h, port) in [
        (
            "UDP",
            "listen.udp / --udp",
            udp,
            free("tcp"),
            free("tcp"),
            udp,
        ),
        (
            "TCP",
            "listen.tcp / --tcp",
            free("udp"),
            tcp,
            free("tcp"),
            tcp,
        ),
        (
            "HTTP",
            "listen.http / --http",
            free("udp"),
            free("tcp"),
            http,
            http,
        ),
    ] {
        let out = serve_cmd(common::pixeld_bin(), &data, u, t, h)
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(
            line.contains(&format!("cannot listen on {what} 127.0.0.1:{port}"))
                && line.contains("Address already in use")
                && line.contains(key),
            "{line}"
        );
    }
}

#[test]
fn a_data_dir_this_user_cannot_write_is_named_with_the_fix() {
    let tmp = common::tempdir();
    // Readable and searchable by everyone, writable by its owner only.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let (udp, tcp, http) = (
        common::free_udp_port(),
        common::free_tcp_port(),
        common::free_tcp_port(),
    );
    let out = if common::is_root() {
        // root writes anywhere, so run as `nobody` (uid 65534) against a root-owned parent;
        // the binary is copied next to it so that `nobody` can execute it wherever the
        // checkout lives.
        let bin = tmp.path().join("pixeld");
        std::fs::copy(common::pixeld_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        serve_cmd(bin.to_str().unwrap(), &data, udp, tcp, http)
            .uid(65534)
            .gid(65534)
            .env("HOME", "/")
            .output()
            .unwrap()
    } else {
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let data = ro.join("data");
        serve_cmd(common::pixeld_bin(), &data, udp, tcp, http)
            .output()
            .unwrap()
    };
    let line = one_error_line(&out);
    assert!(
        line.contains("is not usable by this process")
            && line.contains("Permission denied")
            && line.contains("install -d -o")
            && line.contains("StateDirectory=pixeld"),
        "{line}"
    );
    assert_eq!(
        line.matches("Permission denied").count(),
        1,
        "the cause is not repeated: {line}"
    );
}

/// A seccomp filter that makes `io_uring_setup` fail with `EPERM` — what a container
/// runtime's default profile or `kernel.io_uring_disabled` does to pixeld.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn forbid_io_uring(cmd: &mut Command) {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const NR_IO_URING_SETUP: u32 = 425;
    fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        // seccomp_data.arch at offset 4: leave other architectures alone.
        stmt(ld, 4),
        jump(jeq, AUDIT_ARCH_X86_64, 0, 3),
        // seccomp_data.nr at offset 0.
        stmt(ld, 0),
        jump(jeq, NR_IO_URING_SETUP, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe; `filter` outlives the call because the closure owns it, and the
    // `sock_fprog` points at its live buffer with its exact length.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn io_uring_forbidden_by_a_seccomp_filter_is_named_with_the_fix() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut cmd = serve_cmd(
        common::pixeld_bin(),
        &data,
        common::free_udp_port(),
        common::free_tcp_port(),
        common::free_tcp_port(),
    );
    forbid_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("io_uring is not available")
            && line.contains("Operation not permitted")
            && line.contains("seccomp")
            && line.contains("io_uring_setup"),
        "{line}"
    );
    // Nothing was started, so nothing was written.
    assert!(!data.join("shard-000").exists());
}
