//! TCP receive on one shard: relays (rsyslog `omfwd`, Vector, Fluent Bit, nginx `stream`).
//!
//! Each shard accepts on its own `SO_REUSEPORT` listener and serves each connection in its
//! own task: read into a bounded buffer, split with [`FrameDecoder`], ingest every frame. TCP
//! can push back, so when the log's write-behind queue is full the connection waits for room
//! before it reads more, instead of dropping. Connections beyond `tcp_max_connections` are
//! refused and counted; an idle connection is closed after `tcp_idle_timeout`; a frame cut off
//! at EOF is counted as `partial_frame`; a bad octet count closes the connection and is counted.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

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

/// Accepts connections until the shard stops.
pub async fn run(listener: TcpListener, ingest: Rc<Ingest>) -> io::Result<()> {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and similar: log, back off, keep serving.
                eprintln!("pixeld: tcp accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
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
        let (ingest, open) = (ingest.clone(), open.clone());
        glommio::spawn_local(async move {
            let _ = connection(stream, &ingest).await;
            open.set(open.get() - 1);
            ingest
                .stats
                .tcp_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .detach();
    }
}

async fn connection(mut stream: TcpStream, ingest: &Ingest) -> io::Result<()> {
    let peer = stream.peer_addr().ok();
    stream
        .set_read_timeout(Some(ingest.cfg.tcp_idle_timeout))
        .map_err(crate::sys::os_error)?;
    let max = ingest.cfg.max_line_bytes;
    let mut decoder = FrameDecoder::new(ingest.cfg.tcp_framing, max);
    let mut buf = vec![0u8; max + 16 + READ_CHUNK];
    let mut filled = 0usize;
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
        stats.count_received(Transport::Tcp, 0, n as u64);
        let now = now_ns();
        let mut fatal = false;
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
        if fatal {
            ShardStats::add(&stats.tcp_framing_errors, 1);
            return Ok(());
        }
        // Ship full increment batches; a full ring stops this connection's reads here.
        ingest.router.flush(crate::route::BATCH_INCS).await;
        buf.copy_within(consumed..filled + n, 0);
        filled = filled + n - consumed;
    }
}
