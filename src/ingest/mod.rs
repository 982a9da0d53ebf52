//! Receiving hits on every shard: UDP syslog (`udp`), TCP relays (`tcp`, framed by
//! `framing`), HTTP pixel and batch endpoints (`http`, which also serves metrics and health). Nothing on this path is shared between shards: each shard binds its own
//! `SO_REUSEPORT` sockets and appends to its own log.
//!
//! [`Ingest::line`] is the one place where a received line meets the log: it parses the
//! syslog header (to flag and count lines that do not parse; the raw bytes are stored either
//! way), appends, counts a refusal under its drop reason, so that received = appended +
//! dropped, and hands every appended record to the router (`route`) for the aggregates. The
//! receive loops call `Router::flush` after each receive batch: that is where a full ring
//! pushes back on a socket.

pub mod framing;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::log::format::FLAG_PARSE_ERROR;
use crate::log::{AppendError, Log, Source, Transport};
use crate::metrics::{DropReason, ShardStats};
use crate::parse::syslog;

pub use framing::Framing;

/// How long a receive loop pauses after a failed accept or receive before it goes on.
pub const RETRY_AFTER: Duration = Duration::from_millis(50);

/// A failed accept (TCP, HTTP) or receive (UDP) that the loop survives (out of file
/// descriptors, the kernel short of memory): logged as `pixeld: {what} failed: {e}`, counted
/// in `pixeld_receive_errors_total{transport}`, then a pause of [`RETRY_AFTER`], so that a
/// lasting cause neither spins the shard nor floods the log.
pub async fn receive_failed(
    stats: &ShardStats,
    transport: Transport,
    what: &str,
    e: &dyn std::fmt::Display,
) {
    stats.count_receive_error(transport);
    eprintln!(
        "pixeld: {what} failed: {e}; receiving on in {} ms",
        RETRY_AFTER.as_millis()
    );
    glommio::timer::sleep(RETRY_AFTER).await;
}

/// Ingest settings shared by every shard (validated from `[ingest]`).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest line (datagram, TCP frame) kept; larger ones are dropped as `oversize`.
    pub max_line_bytes: usize,
    /// Requested UDP receive buffer per shard socket.
    pub udp_rcvbuf: usize,
    /// After a receive that emptied its socket, how long a UDP or TCP socket waits before
    /// the next one (`ingest.receive_coalesce`; zero: never), so that a shard under a
    /// moderate load wakes once per window instead of once per datagram or segment.
    pub receive_coalesce: Duration,
    pub tcp_framing: Framing,
    /// Open TCP connections allowed per shard; more are refused and counted.
    pub tcp_max_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Largest `POST /v1/events` body.
    pub http_max_body: usize,
    /// Open HTTP connections allowed per shard; more are closed at once and counted.
    pub http_max_connections: usize,
    /// A request whose headers have not all arrived this long after its first byte (or a
    /// keep-alive connection idle this long) is closed: slowloris.
    pub http_header_timeout: Duration,
    /// How long an `Idempotency-Key` of `POST /v1/events` is remembered.
    pub idempotency_horizon: Duration,
    /// What `/p.gif` does while the log's write-behind queue is full.
    pub pixel_overload: PixelOverload,
    /// Peers whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Who may send hits (`ingest.allowed_sources`); empty: anyone.
    pub allowed_sources: Vec<ipnet::IpNet>,
}

/// What the pixel does while the log cannot keep up (`ingest.pixel_overload`). A browser
/// never retries a pixel, so a hit refused is lost either way; the choice is between
/// answering at once and holding the reader's request a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOverload {
    /// Answer the GIF at once; a hit the log cannot take is dropped and counted.
    Drop,
    /// Hold the answer up to this long for room in the log's queue, then as `Drop`.
    Wait(Duration),
}

impl PixelOverload {
    /// As the config writes it, for the health strip.
    pub fn describe(&self) -> String {
        match self {
            PixelOverload::Drop => "drop".into(),
            PixelOverload::Wait(d) => format!("wait {}ms", d.as_millis()),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_line_bytes: 64 << 10,
            udp_rcvbuf: 8 << 20,
            receive_coalesce: Duration::from_millis(2),
            tcp_framing: Framing::Auto,
            tcp_max_connections: 10_000,
            tcp_idle_timeout: Duration::from_secs(300),
            http_max_body: 1 << 20,
            http_max_connections: 10_000,
            http_header_timeout: Duration::from_secs(10),
            idempotency_horizon: Duration::from_secs(86_400),
            pixel_overload: PixelOverload::Drop,
            trusted_proxies: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
            allowed_sources: Vec::new(),
        }
    }
}

/// One shard's ingest context: its log, its counters, the settings.
pub struct Ingest {
    pub log: Rc<Log>,
    pub stats: Arc<ShardStats>,
    pub cfg: IngestConfig,
    /// Routes every appended record to the aggregates.
    pub router: Rc<crate::route::Router>,
}

impl IngestConfig {
    /// Whether `peer` may send hits (`ingest.allowed_sources`). An IPv4 peer on an IPv6
    /// socket (`::ffff:a.b.c.d`) is matched as IPv4.
    pub fn allows(&self, peer: Option<SocketAddr>) -> bool {
        if self.allowed_sources.is_empty() {
            return true;
        }
        let Some(peer) = peer else { return false };
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allowed_sources.iter().any(|n| n.contains(&ip))
    }
}

impl Ingest {
    /// Parses, appends and counts one received line (already counted as received). Empty
    /// lines are dropped as `empty`; a refused append is counted under its reason and
    /// returned (`Ok(None)` for an empty line), so that a TCP reader can wait for room instead of reading more.
    pub fn line(
        &self,
        transport: Transport,
        peer: Option<SocketAddr>,
        bytes: &[u8],
        recv_ts: u64,
    ) -> Result<Option<u64>, AppendError> {
        if bytes.is_empty() {
            self.stats.count_drop(DropReason::Empty, 1);
            return Ok(None);
        }
        let mut flags = 0;
        let msg = match syslog::parse(bytes) {
            Ok(s) => s.msg,
            Err(e) => {
                self.stats.count_parse_error(e);
                flags |= FLAG_PARSE_ERROR;
                bytes
            }
        };
        let source = Source { transport, peer };
        // TCP and HTTP push back on their senders instead of dropping (see `Log::is_congested`).
        let appended = match transport {
            Transport::Tcp | Transport::Http => {
                self.log.append_pushback(recv_ts, source, flags, bytes)
            }
            Transport::Udp | Transport::Import => self.log.append(recv_ts, source, flags, bytes),
        };
        match appended {
            Ok(o) => {
                self.router.live(o, recv_ts, msg);
                Ok(Some(o))
            }
            Err(e) => {
                self.stats.count_drop(e.reason(), 1);
                Err(e)
            }
        }
    }
}
