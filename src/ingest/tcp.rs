//! TCP receive on one shard: relays (rsyslog `omfwd`, Vector, Fluent Bit, nginx `stream`).
//!
//! Each shard accepts on its own `SO_REUSEPORT` listener and serves each connection in its
//! own task: read into a bounded buffer, split with [`FrameDecoder`], ingest every frame. TCP
//! can push back, so when the log's write-behind queue is full the connection waits for room
//! before it reads more, instead of dropping. Connections beyond `tcp_max_connections` are
//! refused and counted; an idle connection is closed after `tcp_idle_timeout`; a frame cut off
//! at EOF is counted as `partial_frame`; a bad octet count closes the connection and is counted.
//!
//! **A clean stop loses nothing a relay sent** (given a relay that looks for the server's FIN
//! before it writes, as rsyslog's `omfwd` does): plain TCP has no acknowledgement a relay could
//! resend from, and a socket closed with unread bytes answers with a reset that discards what
//! its kernel had acknowledged, and what the relay's kernel still held. So at the shard's stop
//! [`run`] first stops accepting (what waits in the accept queue stays there for the next
//! process when systemd holds the socket), then shuts the write side of every open connection
//! (a FIN: the relay reconnects, to the next process), and keeps reading and appending each
//! one until the relay closes it. A connection whose relay has sent nothing for
//! [`DRAIN_QUIET`] since the FIN (an idle relay: it will see the FIN before its next write),
//! or that is still open after [`DRAIN_MAX`] (a relay that never looks), gets its read side
//! shut: what its socket holds is read and appended, then it is closed; what such a relay
//! writes after that is lost with a reset. Only then may the shard close its log.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use super::framing::{Event, FrameDecoder};
use super::Ingest;
use crate::log::Transport;
use crate::metrics::{DropReason, ShardStats};
use crate::sys::now_ns;

/// Read size per `read` call.
const READ_CHUNK: usize = 64 << 10;

/// Binds and listens on `addr` with `SO_REUSEPORT` (every shard its own listener), as
/// glommio's `TcpListener::bind` would, but returns the descriptor: the shard may hand it to
/// systemd's file descriptor store before [`adopt`] makes it a listener. Used for the TCP and
/// the HTTP port.
pub fn bind(addr: SocketAddr) -> io::Result<std::os::fd::OwnedFd> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(std::net::TcpListener::from(s).into())
}

/// A listening socket from elsewhere (systemd's socket activation), made non-blocking:
/// systemd passes blocking sockets (unless `NonBlocking=yes`), and glommio first tries a
/// plain `accept`, which on a blocking socket would stall the shard until a client comes.
#[allow(unsafe_code)]
pub fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let s = socket2::Socket::from(std::net::TcpListener::from(fd));
    s.set_nonblocking(true)?;
    // SAFETY: the descriptor is owned and open, a listening stream socket (checked by
    // `server::activation`); ownership passes to the listener.
    Ok(unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) })
}

/// How long a stopping shard waits after its FIN for a relay that keeps sending to close its
/// connection, before it shuts the read side (reads what is queued, then closes).
pub const DRAIN_MAX: Duration = Duration::from_secs(2);

/// After the FIN, a connection on which nothing arrives for this long belongs to an idle relay:
/// its read side is shut without waiting for [`DRAIN_MAX`].
pub const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// What the accept loop knows of one open connection, to stop it.
struct Open {
    /// The connection's socket; open while this entry is in [`Conns`] (the connection task
    /// removes its entry before its stream closes the descriptor).
    fd: RawFd,
    /// When the connection last read something.
    last_read: Cell<Instant>,
}

/// The open connections of a shard, by task number.
type Conns = Rc<RefCell<HashMap<u64, Rc<Open>>>>;

/// Removes a connection's entry when its task ends, before the stream is dropped.
struct Registered {
    conns: Conns,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.borrow_mut().remove(&self.id);
    }
}

/// Accepts connections until `shutdown` is set, then stops every open connection without
/// losing what its relay sent (see the module doc) and returns once they are closed. The
/// shard closes its log only after this returns.
pub async fn run(
    listener: TcpListener,
    ingest: Rc<Ingest>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    let open = Rc::new(Cell::new(0usize));
    let conns: Conns = Rc::default();
    let mut next_id = 0u64;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !shutdown.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // Out of file descriptors and similar: log, count, back off, keep serving.
                super::receive_failed(&ingest.stats, Transport::Tcp, "tcp accept", &e).await;
                continue;
            }
        };
        if !ingest.cfg.allows(stream.peer_addr().ok()) {
            ShardStats::add(&ingest.stats.tcp_source_refused, 1);
            drop(stream);
            continue;
        }
        if open.get() >= ingest.cfg.tcp_max_connections {
            ShardStats::add(&ingest.stats.tcp_refused, 1);
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        ShardStats::add(&ingest.stats.tcp_connections, 1);
        let _ = allow_rebind(&stream);
        let state = Rc::new(Open {
            fd: stream.as_raw_fd(),
            last_read: Cell::new(Instant::now()),
        });
        next_id += 1;
        conns.borrow_mut().insert(next_id, state.clone());
        let registered = Registered {
            conns: conns.clone(),
            id: next_id,
        };
        let (ingest, open) = (ingest.clone(), open.clone());
        glommio::spawn_local(async move {
            let _ = connection(stream, &ingest, &state, registered).await;
            open.set(open.get() - 1);
            ingest
                .stats
                .tcp_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .detach();
    }
    // Stop accepting: the listener's queue is left to the next process.
    drop(listener);
    drain(&conns).await;
    Ok(())
}

/// Sends a FIN on every open connection, then waits until each has closed: shuts the read side
/// of one that has been quiet for [`DRAIN_QUIET`], or of every one left after [`DRAIN_MAX`]
/// (its task then reads what is queued and ends).
async fn drain(conns: &Conns) {
    let began = Instant::now();
    for c in conns.borrow().values() {
        shut(c, libc::SHUT_WR);
    }
    let mut cut = std::collections::HashSet::new();
    while !conns.borrow().is_empty() {
        let late = began.elapsed() >= DRAIN_MAX;
        for (id, c) in conns.borrow().iter() {
            let quiet =
                began.elapsed() >= DRAIN_QUIET && c.last_read.get().elapsed() >= DRAIN_QUIET;
            if (late || quiet) && cut.insert(*id) {
                shut(c, libc::SHUT_RD);
            }
        }
        if began.elapsed() >= DRAIN_MAX + Duration::from_secs(1) {
            // Tasks that cannot finish (waiting for a log that no longer writes): the shard
            // stops without them; what they read later is refused and counted.
            eprintln!(
                "pixeld: tcp: {} connection(s) still open {} s after the stop began; closing the log without them",
                conns.borrow().len(),
                began.elapsed().as_secs()
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// `SO_REUSEADDR` on an accepted connection. The stop closes first (the FIN), so the
/// connection then waits out TIME_WAIT (or FIN_WAIT2 while the relay has not closed) on
/// pixeld's port; the kernel lets the next process's exclusive check of that port (the
/// preflight binds it with `SO_REUSEADDR` only, no `SO_REUSEPORT`) pass such a socket only when
/// the socket has the option too. Without it a restart that binds its own ports failed with
/// "address in use" for up to a minute after a stop with relays connected.
pub(crate) fn allow_rebind(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_reuse_address(true)
}

/// `shutdown(2)` of an open connection's socket (a failure means it is already closing).
#[allow(unsafe_code)]
fn shut(c: &Open, how: libc::c_int) {
    // SAFETY: `c.fd` is the socket of a connection whose entry is in `Conns`, and an entry is
    // removed (`Registered`) before the connection's stream closes the descriptor, all on this
    // executor's thread; so the descriptor is that open socket. shutdown only changes its state.
    let _ = unsafe { libc::shutdown(c.fd, how) };
}

async fn connection(
    mut stream: TcpStream,
    ingest: &Ingest,
    state: &Open,
    registered: Registered,
) -> io::Result<()> {
    // Dropped before `stream` (declared after it): the entry goes before the descriptor closes.
    let _registered = registered;
    let peer = stream.peer_addr().ok();
    stream
        .set_read_timeout(Some(ingest.cfg.tcp_idle_timeout))
        .map_err(crate::sys::os_error)?;
    let max = ingest.cfg.max_line_bytes;
    let mut decoder = FrameDecoder::new(ingest.cfg.tcp_framing, max);
    let mut buf = vec![0u8; max + 16 + READ_CHUNK];
    let mut filled = 0usize;
    let mut short_before = false;
    let stats = &ingest.stats;
    loop {
        // Push back on the relay: read nothing more while the log's queue is full.
        while ingest.log.is_congested() {
            if ingest.log.wait_for_space().await.is_err() {
                return Ok(());
            }
        }
        if filled + READ_CHUNK > buf.len() {
            buf.resize(filled + READ_CHUNK, 0);
        }
        // An idle timeout or a reset ends the connection like EOF: whatever is buffered is
        // an incomplete frame.
        let n = stream
            .read(&mut buf[filled..filled + READ_CHUNK])
            .await
            .unwrap_or_default();
        if n == 0 {
            match decoder.finish(&buf[..filled]) {
                Some(Event::Partial { .. }) => {
                    stats.count_received(Transport::Tcp, 1, 0);
                    stats.count_drop(DropReason::PartialFrame, 1);
                }
                Some(Event::Oversize { .. }) => {
                    stats.count_received(Transport::Tcp, 1, 0);
                    stats.count_drop(DropReason::Oversize, 1);
                }
                _ => {}
            }
            return Ok(());
        }
        state.last_read.set(Instant::now());
        stats.count_received(Transport::Tcp, 0, n as u64);
        let now = now_ns();
        let mut fatal = false;
        // The frames' own increments are applied together, at the latest when this ends.
        let gathered = ingest.router.gather();
        let consumed = decoder.decode(&buf[..filled + n], |ev| match ev {
            Event::Frame(f) => {
                stats.count_received(Transport::Tcp, 1, 0);
                // A refusal is counted by `line`.
                let _ = ingest.line(Transport::Tcp, peer, f, now);
            }
            Event::Empty => {}
            Event::Oversize { .. } => {
                stats.count_received(Transport::Tcp, 1, 0);
                stats.count_drop(DropReason::Oversize, 1);
            }
            Event::Partial { .. } => {
                stats.count_received(Transport::Tcp, 1, 0);
                stats.count_drop(DropReason::PartialFrame, 1);
            }
            Event::Fatal(_) => fatal = true,
        });
        drop(gathered);
        if fatal {
            ShardStats::add(&stats.tcp_framing_errors, 1);
            return Ok(());
        }
        // Ship full increment batches; a full ring stops this connection's reads here.
        ingest.router.flush(crate::route::BATCH_INCS).await;
        buf.copy_within(consumed..filled + n, 0);
        filled = filled + n - consumed;
        // The socket is empty (a read smaller than asked for). Under a moderate load (this
        // read and the one before were short: not a shard catching up with a fast relay),
        // let the relay's next writes gather for a while and take them in one read (TCP's
        // own flow control holds them meanwhile).
        let coalesce = ingest.cfg.receive_coalesce;
        let short = n < READ_CHUNK;
        if short && short_before && !coalesce.is_zero() {
            glommio::timer::sleep(coalesce).await;
        }
        short_before = short;
    }
}
