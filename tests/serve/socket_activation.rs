//! Socket activation, the test playing systemd: it binds the UDP, TCP and HTTP listeners
//! itself and starts `pixeld serve` with them as fds 3–5 and `LISTEN_FDS`/`LISTEN_FDNAMES`/
//! `LISTEN_PID` (set by a shell that then `exec`s pixeld, so the pid is pixeld's), exactly as
//! systemd's socket unit does. A stream of numbered datagrams runs while pixeld is stopped
//! (SIGTERM) and started again twice; a TCP line and an HTTP batch are sent while no pixeld
//! runs. Every datagram is in the log exactly once, the line is there, the batch is answered
//! by the next process. Wrong descriptors stop the start with one line naming the fix.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::log_http::{next_offsets, read_range};
use crate::common::{self, Server};

const DATAGRAMS: u64 = 1500;
const RATE: u64 = 200;

/// `pixeld serve` with `fds` as 3, 4, 5… and the systemd variables naming them (plus `env`).
#[allow(unsafe_code)]
pub(crate) fn activated(
    data: &std::path::Path,
    fds: &[RawFd],
    names: &str,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Server {
    let mut cmd = Command::new("/bin/sh");
    cmd.envs(env.iter().copied());
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ exec "$0" "$@""#,
        common::pixeld_bin(),
    ])
    .env("LISTEN_FDS", fds.len().to_string())
    .env("LISTEN_FDNAMES", names);
    let fds = fds.to_vec();
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on descriptors
    // this process owns; first moved above 100 so that no dup2 overwrites a source not yet
    // copied, then placed at 3, 4, 5… without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Server::spawn(cmd, data, &extra)
}

pub(crate) fn stop(s: Server) {
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
}

/// Numbered datagrams (`seq` 0…DATAGRAMS) to `target` at RATE per second, from a thread.
pub(crate) fn send_numbered(target: std::net::SocketAddr) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        for seq in 0..DATAGRAMS {
            let due = t0 + Duration::from_micros(seq * 1_000_000 / RATE);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let line = format!(r#"{{"url":"https://act.example/{seq}","seq":{seq}}}"#);
            out.send_to(line.as_bytes(), target).unwrap();
        }
    })
}

/// While no pixeld runs: a TCP connection and its line (`tcp-gap-ROUND`), and in round 0 an
/// HTTP batch (`http-gap`) whose answer the returned thread waits for.
pub(crate) fn send_while_down(
    round: usize,
    tcp: u16,
    http: u16,
    gap_batch: &mut Option<std::thread::JoinHandle<String>>,
) {
    let mut c = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    c.write_all(format!("{{\"url\":\"https://act.example/tcp-gap-{round}\"}}\n").as_bytes())
        .unwrap();
    drop(c);
    if round == 0 {
        *gap_batch = Some(std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", http)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let body = "{\"url\":\"https://act.example/http-gap\"}\n";
            write!(
                c,
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
            answer
        }));
    }
}

/// Every datagram of [`send_numbered`] in the log exactly once, the three lines of
/// [`send_while_down`]'s two rounds, nothing else.
pub(crate) fn check_read_back(http: u16) {
    let total = DATAGRAMS + 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ends = loop {
        let n = next_offsets(http);
        if n.iter().sum::<u64>() >= total || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut seen = vec![0u32; DATAGRAMS as usize];
    let mut gaps = Vec::new();
    for (shard, &end) in ends.iter().enumerate() {
        for (_, b) in read_range(http, shard, 0, end, 1000) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            match v["seq"].as_u64() {
                Some(n) => seen[n as usize] += 1,
                None => gaps.push(v["url"].as_str().unwrap().to_string()),
            }
        }
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != 1)
        .map(|(i, &c)| (i, c))
        .collect();
    assert!(
        wrong.is_empty(),
        "datagrams not seen exactly once (seq, times): {wrong:?}"
    );
    gaps.sort();
    assert_eq!(
        gaps,
        [
            "https://act.example/http-gap",
            "https://act.example/tcp-gap-0",
            "https://act.example/tcp-gap-1"
        ]
    );
}

#[test]
fn restarts_lose_and_double_nothing_while_systemd_holds_the_sockets() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Room for what arrives while no pixeld runs (the kernel caps it at rmem_max).
    socket2::SockRef::from(&udp)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = (
        udp.local_addr().unwrap(),
        tcp.local_addr().unwrap().port(),
        http.local_addr().unwrap().port(),
    );
    let fds = [udp.as_raw_fd(), tcp.as_raw_fd(), http.as_raw_fd()];
    let start = || {
        let mut s = activated(&data, &fds, "udp:tcp:http", &["--shards", "2"], &[]);
        assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
        assert!(
            s.seen.iter().any(|l| l.contains("socket activation")),
            "{:?}",
            s.seen
        );
        s.http = ports.2;
        s
    };
    let mut s = start();
    // pixeld made them non-blocking (the flag belongs to the socket, shared with this
    // process's descriptors): systemd passes blocking sockets, on which a shard's first
    // accept would stall it until a client came.
    for fd in fds {
        // SAFETY: fcntl(F_GETFL) on a descriptor this test owns; no memory is touched.
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags & libc::O_NONBLOCK != 0, "fd {fd} is still blocking");
    }

    // The stream: numbered datagrams at a steady rate from another thread.
    let sender = send_numbered(ports.0);
    let mut gap_batch = None;
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(2000));
        stop(s);
        send_while_down(round, ports.1, ports.2, &mut gap_batch);
        s = start();
    }
    sender.join().unwrap();
    let answer = gap_batch.unwrap().join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    check_read_back(s.http);
    let m = common::metrics(s.http);
    assert_eq!(m.get("pixeld_udp_kernel_drops_total"), Some(&0.0));
    stop(s);
}

#[test]
fn wrong_descriptors_stop_the_start_naming_the_fix() {
    let tmp = common::tempdir();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    for (fds, names, want) in [
        (
            vec![udp.as_raw_fd(), udp2.as_raw_fd(), http.as_raw_fd()],
            "udp:tcp:http",
            "must be a stream socket",
        ),
        (
            vec![udp.as_raw_fd(), tcp.as_raw_fd()],
            "udp:tcp",
            "no http socket",
        ),
        (
            vec![
                udp.as_raw_fd(),
                udp2.as_raw_fd(),
                tcp.as_raw_fd(),
                http.as_raw_fd(),
            ],
            "udp:udp:tcp:http",
            "one per shard (1)",
        ),
    ] {
        let s = activated(
            &tmp.path().join("data"),
            &fds,
            names,
            &["--shards", "1"],
            &[],
        );
        let (code, log) = s.wait();
        assert_ne!(code, Some(0), "{log}");
        assert!(
            log.contains(want) && log.contains("socket activation"),
            "{want}: {log}"
        );
        assert!(!log.contains("ready"), "{log}");
    }
}
