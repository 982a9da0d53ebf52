//! systemd's file descriptor store, the test playing systemd: `pixeld serve` binds its own
//! sockets and, under a service manager whose unit has a store (`NOTIFY_SOCKET`, `$FDSTORE`),
//! hands each to it with `FDSTORE=1` and its name (`stored-udp`, `stored-tcp`,
//! `stored-http`). The test receives them (SCM_RIGHTS on its notify socket) and passes them to
//! the next process as systemd does after a restart (`LISTEN_FDS`, `LISTEN_FDNAMES`). A
//! stream of numbered datagrams runs across two SIGTERM restarts, the second with more
//! shards than stored sockets: every datagram is in the log exactly once, lines sent while
//! no pixeld runs are read by the next one, and a process started from the store stores
//! nothing again.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use sendfd::RecvWithFd;

use crate::common::{self, Server};
use crate::socket_activation::{activated, check_read_back, send_numbered, send_while_down, stop};

/// Notifications and descriptors received on the test's notify socket until `until` holds
/// for what was stored (or 30 s pass): (every line, the stored descriptors by name).
fn receive(
    sock: &UnixDatagram,
    until: impl Fn(&[String], &BTreeMap<String, Vec<OwnedFd>>) -> bool,
) -> (Vec<String>, BTreeMap<String, Vec<OwnedFd>>) {
    let mut lines = Vec::new();
    let mut stored: BTreeMap<String, Vec<OwnedFd>> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(30);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < end && !until(&lines, &stored) {
        let mut buf = [0u8; 4096];
        let mut fds = [-1 as RawFd; 8];
        let Ok((n, nfds)) = sock.recv_with_fd(&mut buf, &mut fds) else {
            continue;
        };
        let msg: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect();
        if msg.iter().any(|l| l == "FDSTORE=1") {
            let name = msg
                .iter()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            for &fd in &fds[..nfds] {
                // SAFETY: the kernel just installed this descriptor in this process
                // (SCM_RIGHTS); nothing else owns it.
                #[allow(unsafe_code)]
                stored
                    .entry(name.clone())
                    .or_default()
                    .push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        lines.extend(msg);
    }
    (lines, stored)
}

#[test]
fn sockets_pixeld_bound_survive_restarts_in_systemds_store() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (udp, tcp, http) = (
        common::free_udp_port(),
        common::free_tcp_port(),
        common::free_tcp_port(),
    );
    let addrs = [
        format!("127.0.0.1:{udp}"),
        format!("127.0.0.1:{tcp}"),
        format!("127.0.0.1:{http}"),
    ];
    let args = |shards: &'static str| -> Vec<String> {
        [
            "--shards", shards, "--udp", &addrs[0], "--tcp", &addrs[1], "--http", &addrs[2],
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // systemd 254+ tells the service that it has a store ($FDSTORE); listen.fd_store = "auto"
    // then stores.
    let env = [
        ("NOTIFY_SOCKET", notify_path.as_os_str()),
        ("FDSTORE", std::ffi::OsStr::new("64")),
    ];

    // First start: pixeld binds, then stores each shard's three sockets.
    let mut cmd = Command::new(common::pixeld_bin());
    cmd.envs(env.iter().copied());
    let mut s = Server::spawn(cmd, &data, &args("2"));
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    s.http = http;
    let (lines, stored) = receive(&notify, |lines, stored| {
        lines.iter().any(|l| l == "READY=1") && stored.values().map(Vec::len).sum::<usize>() == 6
    });
    let counts: Vec<(&str, usize)> = stored.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        [("stored-http", 2), ("stored-tcp", 2), ("stored-udp", 2)],
        "{lines:?}"
    );
    // Room for what arrives while no pixeld runs (the kernel caps it at rmem_max).
    for fd in &stored["stored-udp"] {
        socket2::SockRef::from(fd)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
    }
    // What systemd passes after a restart: every stored descriptor, named.
    let mut fds: Vec<RawFd> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (name, list) in &stored {
        for fd in list {
            fds.push(fd.as_raw_fd());
            names.push(name);
        }
    }
    let names = names.join(":");

    let sender = send_numbered(format!("127.0.0.1:{udp}").parse().unwrap());
    let mut gap_batch = None;
    // Two restarts from the store: with the same shard count, then with three shards (a
    // shard count can grow), the third reading a duplicate of a stored socket of each kind.
    for (round, shards) in ["2", "3"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(2000));
        stop(s);
        send_while_down(round, tcp, http, &mut gap_batch);
        let extra = args(shards);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        s = activated(&data, &fds, &names, &extra, &env);
        assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
        assert!(
            s.seen
                .iter()
                .any(|l| l.contains("systemd kept in its file descriptor store")),
            "{:?}",
            s.seen
        );
        s.http = http;
        // Started from the store, it stores nothing again.
        let (lines, again) = receive(&notify, |lines, _| lines.iter().any(|l| l == "READY=1"));
        assert!(again.is_empty(), "stored again: {lines:?}");
    }
    sender.join().unwrap();
    let answer = gap_batch.unwrap().join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    check_read_back(http);
    let m = common::metrics(http);
    assert_eq!(m.get("pixeld_udp_kernel_drops_total"), Some(&0.0));
    stop(s);
}

#[test]
fn without_a_store_nothing_is_stored() {
    // Under a service manager that does not say it has a store (no $FDSTORE, systemd 252)
    // and listen.fd_store = "auto": no FDSTORE message (systemd would log a warning for each).
    let tmp = common::tempdir();
    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = Command::new(common::pixeld_bin());
    cmd.env("NOTIFY_SOCKET", &notify_path).env_remove("FDSTORE");
    let args: Vec<String> = [
        "--shards".to_string(),
        "2".into(),
        "--udp".into(),
        format!("127.0.0.1:{}", common::free_udp_port()),
        "--tcp".into(),
        format!("127.0.0.1:{}", common::free_tcp_port()),
        "--http".into(),
        format!("127.0.0.1:{}", common::free_tcp_port()),
    ]
    .into();
    let mut s = Server::spawn(cmd, &tmp.path().join("data"), &args);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (lines, stored) = receive(&notify, |lines, _| lines.iter().any(|l| l == "READY=1"));
    assert!(
        stored.is_empty() && !lines.iter().any(|l| l == "FDSTORE=1"),
        "{lines:?}"
    );
    stop(s);
}
