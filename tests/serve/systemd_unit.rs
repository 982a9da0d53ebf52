//! The shipped unit files: `systemd-analyze verify` accepts the service and its socket unit
//! (with ExecStart pointed at the binary under test), whose addresses are the default
//! config's listen addresses, and `systemd-analyze security --offline=true` scores the
//! service's exposure at 2.0 or less. Skipped, saying so, where systemd-analyze is not
//! installed.

use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pixeld.service");
const SOCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pixeld.socket");

fn analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("SKIPPED: systemd-analyze not runnable ({e}); install systemd");
            None
        }
    }
}

#[test]
fn unit_verifies_and_is_hardened() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains("Type=notify") && text.contains("WatchdogSec="));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(text.contains("Sockets=pixeld.socket") && text.contains("Requires=pixeld.socket"));
    let unit = dir.path().join("pixeld.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/pixeld", env!("CARGO_BIN_EXE_pixeld")),
    )
    .unwrap();
    // The socket unit listens where the default config does (pixeld tells its two stream
    // sockets apart by address).
    let socket_text = std::fs::read_to_string(SOCKET).unwrap();
    let defaults = pixeld::config::RawConfig::defaults();
    for line in [
        format!("ListenDatagram={}", defaults.listen.udp),
        format!("ListenStream={}", defaults.listen.tcp),
        format!("ListenStream={}", defaults.listen.http),
    ] {
        assert!(
            socket_text.lines().any(|l| l == line),
            "{line} not in pixeld.socket"
        );
    }
    let socket = dir.path().join("pixeld.socket");
    std::fs::write(&socket, &socket_text).unwrap();
    let Some(v) = analyze(&["verify", socket.to_str().unwrap(), unit.to_str().unwrap()]) else {
        return;
    };
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let Some(s) = analyze(&["security", "--offline=true", unit.to_str().unwrap()]) else {
        return;
    };
    let out = String::from_utf8_lossy(&s.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for pixeld.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {out}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}
