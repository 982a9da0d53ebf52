//! The HTTP port of one shard: hyper's HTTP/1 server on glommio. Every shard accepts on the
//! same `SO_REUSEPORT` address, so connections spread over shards like UDP flows do. This file
//! owns the connection: accepting, the per-shard connection cap, the slowloris header timeout,
//! the 16 KiB request-head limit, and the glue between glommio's `TcpStream` and hyper's I/O
//! and timer traits. What a request means is decided by [`super::router`].

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};

use super::HttpContext;
use crate::metrics::ShardStats;

/// Serves connections until the shard stops.
pub async fn run(listener: TcpListener, ctx: Rc<HttpContext>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                let what = format!("shard {}: http accept", ctx.shard);
                crate::ingest::receive_failed(
                    &ctx.ingest.stats,
                    crate::transport::Transport::Http,
                    &what,
                    &e,
                )
                .await;
                continue;
            }
        };
        let stats = ctx.ingest.stats.clone();
        if ShardStats::get(&stats.http_connections) as usize >= ctx.ingest.cfg.http_max_connections
        {
            ShardStats::add(&stats.http_refused, 1);
            drop(stream);
            continue;
        }
        ShardStats::add(&stats.http_connections, 1);
        // A connection pixeld closes first (a keep-alive one at a stop or crash) must not keep
        // the next process from binding the port (see `allow_rebind`).
        let _ = crate::ingest::tcp::allow_rebind(&stream);
        let peer = stream.peer_addr().ok();
        let ctx = ctx.clone();
        let header_timeout = ctx.ingest.cfg.http_header_timeout;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        glommio::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move {
                    let r = super::router::route(req, peer, ctx).await;
                    // Test-only (`PIXELD_TEST_HTTP_FAULTS`): an answer marked to be lost
                    // becomes an error, on which hyper closes the connection without it.
                    super::faults::reset_if_marked(&r, fd)?;
                    Ok::<_, io::Error>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                // Slowloris: a request whose head is not complete in time is closed.
                .timer(HyperTimer)
                .header_read_timeout(header_timeout)
                // Request heads above this get 431.
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(HyperStream(stream), service)
                .await;
            stats
                .http_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .detach();
    }
}

/// The largest request head (request line and headers) read; hyper answers 431 above it.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// hyper's timer (for `header_read_timeout`), on `futures-timer`'s global timer thread:
/// hyper requires `Send + Sync` sleeps, which glommio's executor-local timers are not. One
/// timer per connection waiting for a request head; nothing on the ingest path.
#[derive(Clone, Copy)]
struct HyperTimer;

struct HyperSleep(futures_timer::Delay);

impl std::future::Future for HyperSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(futures_timer::Delay::new(duration)))
    }
    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(std::time::Instant::now()))
    }
}

/// glommio's `TcpStream` seen through hyper's I/O traits.
struct HyperStream(TcpStream);

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // Read into a stack buffer and copy: no unsafe needed to expose hyper's
        // uninitialised buffer as a slice.
        let mut tmp = [0u8; 8192];
        let want = tmp.len().min(buf.remaining());
        match Pin::new(&mut self.0).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
