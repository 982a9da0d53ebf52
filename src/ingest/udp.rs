//! UDP syslog receive on one shard: nginx's own path (`access_log syslog:`).
//!
//! Every shard binds the same address with `SO_REUSEPORT`, so the kernel spreads senders
//! across shards. Receive is batched: the shard waits for the socket to become readable with
//! one glommio (io_uring) `peek`, then drains up to [`BATCH`] datagrams per `recvmmsg` call
//! without blocking until the socket is empty. After each drain (and every [`DROPS_EVERY`]
//! full batches while it lasts) one `getsockopt(SO_MEMINFO)` reads the socket's cumulative
//! drop count, from which the kernel's drops are accumulated as deltas, so loss in the kernel
//! is counted too, as soon as the shard has emptied its socket. (Each datagram could carry
//! that count, `SO_RXQ_OVFL`, which pixeld read until 2026-12-06; but then the drops at the
//! end of a flood were known only when a later datagram came, and the kernel adds a control
//! message to every datagram once the first drop has happened. No CPU per datagram was
//! measurably saved by the change: docs/performance-history.md.) Oversize datagrams (larger
//! than `max_line_bytes`) are dropped and counted; empty ones are counted as `empty`.
//!
//! A receive that fails (the kernel short of memory, say) is logged and counted, and the
//! shard reads on after a pause ([`super::receive_failed`]), as its TCP and HTTP accept loops
//! do; only an error that says the socket itself is unusable ends the task, and the shard then
//! marks itself unready (`/readyz` 503, `pixeld_udp_receive_stopped`) until a restart.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use glommio::net::UdpSocket;

use super::Ingest;
use crate::log::Transport;
use crate::metrics::{DropReason, ShardStats};

/// Datagrams received per `recvmmsg` call.
pub const BATCH: usize = 64;
/// While full batches keep coming, the kernel's drop count is read every this many of them.
pub const DROPS_EVERY: usize = 16;
/// Whether a receive error means the socket itself is unusable (or a bug in the call), so
/// that reading on is pointless: `run` then marks the shard unready (`udp_stopped`) and
/// returns it. Everything else is retried.
fn fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT)
    )
}

/// Test-only fault hooks (cargo feature `fault-injection`): `PIXELD_TEST_UDP_RECV_ERRORS=N`
/// makes the first N receives of every UDP socket fail with `ENOMEM`, before the call, so no
/// datagram is lost by it (tests/ingest/udp_overload.rs checks that the shard receives on);
/// `PIXELD_TEST_UDP_RECV_FATAL=1` makes the first fail with `EBADF` instead, which ends the
/// task (the same file checks that `/readyz` and `/metrics` say so).
#[cfg(feature = "fault-injection")]
fn injected_errors() -> (usize, i32) {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    match var("PIXELD_TEST_UDP_RECV_FATAL") {
        0 => (var("PIXELD_TEST_UDP_RECV_ERRORS"), libc::ENOMEM),
        _ => (1, libc::EBADF),
    }
}

#[cfg(not(feature = "fault-injection"))]
fn injected_errors() -> (usize, i32) {
    (0, 0)
}

/// Binds `addr` with `SO_REUSEPORT` and the requested receive buffer.
/// Returns the socket (made a glommio socket with `UdpSocket::from`, after the shard may have
/// handed it to systemd's file descriptor store) and the receive buffer size the kernel
/// actually granted.
pub fn bind(addr: SocketAddr, rcvbuf: usize) -> io::Result<(socket2::Socket, usize)> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_recv_buffer_size(rcvbuf)?;
    kernel_drops(s.as_raw_fd())?;
    s.bind(&addr.into())?;
    let granted = s.recv_buffer_size()?;
    Ok((s, granted))
}

/// A bound UDP socket from elsewhere (systemd's socket activation), set up like [`bind`]'s:
/// non-blocking, the receive buffer asked for (systemd's `ReceiveBuffer=` may have set a larger one, which
/// is kept).
pub fn adopt(s: socket2::Socket, rcvbuf: usize) -> io::Result<(UdpSocket, usize)> {
    // systemd passes blocking sockets; `recvmmsg` must never wait on the executor thread.
    s.set_nonblocking(true)?;
    if s.recv_buffer_size()? / 2 < rcvbuf {
        s.set_recv_buffer_size(rcvbuf)?;
    }
    kernel_drops(s.as_raw_fd())?;
    let granted = s.recv_buffer_size()?;
    Ok((UdpSocket::from(s), granted))
}

/// How many datagrams the kernel has dropped on socket `fd` since it was created (a `u32`
/// that wraps): `SO_MEMINFO`'s `SK_MEMINFO_DROPS`.
#[allow(unsafe_code)]
fn kernel_drops(fd: i32) -> io::Result<u32> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: a socket fd, and a pointer to a live buffer of `len` bytes, which the kernel
    // fills up to `len` and shortens `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let at = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (at + 1) * std::mem::size_of::<u32>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_MEMINFO without a drop count (Linux older than 4.6)",
        ));
    }
    Ok(info[at])
}

/// Receive buffers and headers for one `recvmmsg` batch, reused for every call.
struct Batch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// What the last call received, reused across calls.
    got: Vec<Received>,
}

impl Batch {
    fn new(slot: usize) -> Self {
        Batch {
            bufs: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
            addrs: vec![zeroed_storage(); BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            got: Vec::with_capacity(BATCH),
        }
    }
}

#[allow(unsafe_code)]
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// One received datagram's metadata.
struct Received {
    len: usize,
    truncated: bool,
    peer: Option<SocketAddr>,
}

/// Receives without blocking into `b.got` (empty when the socket is empty).
#[allow(unsafe_code)]
fn recv_batch(fd: i32, b: &mut Batch) -> io::Result<()> {
    b.got.clear();
    b.iovs.clear();
    b.hdrs.clear();
    for buf in b.bufs.iter_mut() {
        b.iovs.push(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
    }
    for i in 0..BATCH {
        // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value, filled in below.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_hdr.msg_iov = &mut b.iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        b.hdrs.push(h);
    }
    // SAFETY: every header points into buffers owned by `b` that live, unmoved, for the
    // duration of the call (the Vecs are not resized between filling the headers and here);
    // the lengths given match the buffers; MSG_DONTWAIT makes the call non-blocking.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            b.hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        return Err(e);
    }
    for h in b.hdrs.iter().take(n as usize) {
        let storage = h.msg_hdr.msg_name.cast::<libc::sockaddr_storage>();
        // SAFETY: msg_name points at the sockaddr_storage of this slot, written by the kernel.
        let peer = unsafe { sockaddr_to_std(&*storage) };
        b.got.push(Received {
            len: h.msg_len as usize,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            peer,
        });
    }
    Ok(())
}

#[allow(unsafe_code)]
fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A UDP socket whose receive buffer holds less than this never waits between receives
/// (`ingest.receive_coalesce`): a burst after a quiet spell could overflow it meanwhile.
pub const COALESCE_MIN_BUFFER: usize = 1 << 20;
/// What the kernel charges a datagram's buffer beyond its payload (its `sk_buff`), roughly.
const DATAGRAM_OVERHEAD: usize = 1024;

/// Whether a socket whose buffer holds `usable` bytes may wait `ingest.receive_coalesce`
/// after a receive that took `datagrams` datagrams of `bytes` bytes in all: only when twice
/// as much as arrived meanwhile would still fit.
pub fn may_coalesce(usable: usize, datagrams: usize, bytes: usize) -> bool {
    usable >= COALESCE_MIN_BUFFER && 2 * (bytes + datagrams * DATAGRAM_OVERHEAD) <= usable
}

/// Receives on `sock` until the shard stops; every datagram is ingested or counted.
/// `usable`: the receive buffer the kernel granted (half what it reports).
pub async fn run(sock: UdpSocket, ingest: Rc<Ingest>, usable: usize) -> io::Result<()> {
    let max = ingest.cfg.max_line_bytes;
    let mut batch = Batch::new(max + 1);
    let mut probe = [0u8; 1];
    let fd = sock.as_raw_fd();
    let stats: &ShardStats = &ingest.stats;
    // Counted from the socket's creation, as the kernel counts them: a socket kept across a
    // restart (socket activation, the file descriptor store) brings the drops of the runs
    // before, and those while no shard read it.
    let mut last_drops: u32 = 0;
    let mut count_drops = || -> io::Result<()> {
        let d = kernel_drops(fd)?;
        // Cumulative, and it wraps at 2^32.
        ShardStats::add(
            &stats.udp_kernel_drops,
            u64::from(d.wrapping_sub(last_drops)),
        );
        last_drops = d;
        Ok(())
    };
    let coalesce = ingest.cfg.receive_coalesce;
    let (mut inject, injected_errno) = injected_errors();
    let mut wait = true;
    loop {
        let mut error = None;
        if wait {
            // Wait (io_uring) until a datagram is there, without consuming it.
            error = sock
                .peek_from(&mut probe)
                .await
                .err()
                .map(crate::sys::os_error);
        }
        let (mut datagrams, mut bytes, mut full) = (0usize, 0usize, 0usize);
        while error.is_none() {
            let received = if inject > 0 {
                inject -= 1;
                Err(io::Error::from_raw_os_error(injected_errno))
            } else {
                recv_batch(fd, &mut batch)
            };
            if let Err(e) = received {
                error = Some(e);
                break;
            }
            if batch.got.is_empty() {
                break;
            }
            // Counted received before any is appended or dropped, so that a reader never
            // sees more appended and dropped than received.
            let got: usize = batch.got.iter().map(|r| r.len).sum();
            stats.count_received(Transport::Udp, batch.got.len() as u64, got as u64);
            datagrams += batch.got.len();
            bytes += got;
            let now = crate::sys::now_ns();
            // The datagrams' own increments are applied together, at the latest below.
            let gathered = ingest.router.gather();
            for (i, r) in batch.got.iter().enumerate() {
                if r.truncated || r.len > max {
                    stats.count_drop(DropReason::Oversize, 1);
                    continue;
                }
                if !ingest.cfg.allows(r.peer) {
                    stats.count_drop(DropReason::SourceNotAllowed, 1);
                    continue;
                }
                let bytes = batch.bufs[i].get(..r.len).unwrap_or_default();
                let _ = ingest.line(Transport::Udp, r.peer, bytes, now);
            }
            drop(gathered);
            // Ship full increment batches; a full ring waits here, and the socket with it.
            ingest.router.flush(crate::route::BATCH_INCS).await;
            if batch.got.len() < BATCH {
                break;
            }
            full += 1;
            if full.is_multiple_of(DROPS_EVERY) {
                if let Err(e) = count_drops() {
                    error = Some(e);
                    break;
                }
            }
            glommio::yield_if_needed().await;
        }
        if datagrams > 0 && error.is_none() {
            error = count_drops().err();
        }
        if let Some(e) = error {
            if fatal(&e) {
                // Only a restart mends it: unready, so that it is seen.
                ShardStats::set_flag(&stats.udp_stopped, true);
                return Err(e);
            }
            super::receive_failed(stats, Transport::Udp, "udp receive", &e).await;
            wait = true;
            continue;
        }
        // The socket is empty. Under a moderate load, let the next datagrams gather for a
        // while and take them in one wake-up; then read without the peek (they are there).
        wait = true;
        if datagrams > 0 && !coalesce.is_zero() && may_coalesce(usable, datagrams, bytes) {
            glommio::timer::sleep(coalesce).await;
            wait = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_when_the_buffer_holds_twice_what_arrived() {
        // The shipped sysctl: 8 MiB granted. 40 datagrams of 600 bytes in a wait: wait on.
        assert!(may_coalesce(8 << 20, 40, 40 * 600));
        // 4 000 of them (2 M/s over 2 ms): 6.4 MB, twice that does not fit.
        assert!(!may_coalesce(8 << 20, 4000, 4000 * 600));
        // The kernel's default buffer (net.core.rmem_max not raised): never.
        assert!(!may_coalesce(212_992, 1, 600));
    }
}
