//! Per-shard counters and gauges, shared with the rest of the process without locks.
//!
//! Each shard owns one [`ShardStats`] and is its only writer; other threads (the supervisor,
//! later the HTTP `/metrics` endpoint) read it. Plain relaxed atomics: counters are updated
//! once per batch or per event on the shard's own cache lines, never through a lock. Every
//! drop has a counter with a bounded reason, and the counters add up:
//! received = appended + dropped.

pub mod prom;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use prom::{Kind, Prom};

use crate::agg::mem::MemPart;
use crate::parse::event::EventError;
use crate::parse::syslog::SyslogError;

/// Why an event was not appended. Bounded: these are the only `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An empty datagram or request body line: nothing to keep.
    Empty,
    /// A TCP frame cut off by the end of its connection.
    PartialFrame,
    /// The write-behind queue was full: the disk is slower than ingest.
    Backpressure,
    /// The disk is full; appending resumes by itself when space returns.
    DiskFull,
    /// The shard is poisoned by a failed fsync and accepts nothing.
    Poisoned,
    /// The record is larger than `max_record_bytes`.
    Oversize,
    /// The shard is shutting down.
    ShuttingDown,
    /// A datagram from an address outside `ingest.allowed_sources`.
    SourceNotAllowed,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Empty,
        DropReason::PartialFrame,
        DropReason::Backpressure,
        DropReason::DiskFull,
        DropReason::Poisoned,
        DropReason::Oversize,
        DropReason::ShuttingDown,
        DropReason::SourceNotAllowed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::PartialFrame => "partial_frame",
            DropReason::Backpressure => "backpressure",
            DropReason::DiskFull => "disk_full",
            DropReason::Poisoned => "poisoned",
            DropReason::Oversize => "oversize",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::SourceNotAllowed => "source_not_allowed",
        }
    }
    fn slot(self) -> usize {
        self as usize
    }
}

/// What happened to an appended record on its way to the aggregates. Bounded label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOutcome {
    /// Counted in the aggregates.
    Aggregated,
    /// Kept in the log but outside the windows (too old, or more than the future allowance
    /// after its receive time).
    OutOfWindow,
    /// Kept in the log but not an event (see `pixeld_agg_unparsed_total{kind}`).
    Unparsed,
    /// A bot's hit (its user agent), counted only in the `bot` dimension (`agg.bots =
    /// "exclude"`, the default).
    Bot,
    /// Kept in the log only: aggregation is off (`agg.enabled = false`).
    AggregationOff,
}

impl AggOutcome {
    pub const ALL: [AggOutcome; 5] = [
        AggOutcome::Aggregated,
        AggOutcome::OutOfWindow,
        AggOutcome::Unparsed,
        AggOutcome::Bot,
        AggOutcome::AggregationOff,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AggOutcome::Aggregated => "aggregated",
            AggOutcome::OutOfWindow => "out_of_window",
            AggOutcome::Unparsed => "unparsed",
            AggOutcome::Bot => "bot",
            AggOutcome::AggregationOff => "aggregation_off",
        }
    }
}

/// Counters of one shard's routing and aggregates. Written by the shard alone.
#[derive(Debug, Default)]
pub struct AggStats {
    outcomes: [AtomicU64; AggOutcome::ALL.len()],
    unparsed: [AtomicU64; EventError::ALL.len()],
    pub no_timestamp: AtomicU64,
    pub bad_timestamp: AtomicU64,
    /// Events whose props a custom dimension reads but which are not a JSON object.
    pub bad_props: AtomicU64,
    pub invalid_utf8: AtomicU64,
    pub no_vid: AtomicU64,
    /// Visitors' pageviews and heartbeats received later than `agg.visit_late_allowance`
    /// after their event time: counted as views and hits, not for visits.
    pub visit_too_late: AtomicU64,
    /// Increments applied on the shard that made them.
    pub local_incs: AtomicU64,
    /// Increments made for another shard (put in its pending batch): at rest, as many as were
    /// shipped and lost together.
    pub queued_incs: AtomicU64,
    /// Times the routing ticker found nothing pending for a peer and slept up to
    /// `route::IDLE_TICK` instead of `route::FLUSH_EVERY`, and how many of those sleeps an
    /// increment queued for a peer ended early.
    pub ticker_idle_waits: AtomicU64,
    pub ticker_woken: AtomicU64,
    /// Minute buckets the ticker folded into their hours (`Aggregates::fold_minutes`), and
    /// the time it spent folding them: the shard does nothing else meanwhile.
    pub minutes_folded: AtomicU64,
    pub fold_nanos: AtomicU64,
    /// The longest one folding pass held the executor (a large minute is folded in slices
    /// over several passes: `agg::cells::UrlFold`), and the partitions of url cells folded
    /// in slices.
    pub fold_max_nanos: AtomicU64,
    pub fold_slices: AtomicU64,
    /// Increments shipped to other shards, and in how many batches.
    pub sent_incs: AtomicU64,
    pub sent_batches: AtomicU64,
    /// Increments received from other shards and applied.
    pub applied_incs: AtomicU64,
    /// Increments that could not be shipped because the owner had stopped (shutdown only).
    pub lost_incs: AtomicU64,
    /// Times a ring was full and the sender waited, and for how long.
    pub ring_full_waits: AtomicU64,
    pub ring_wait_nanos: AtomicU64,
    /// Increments refused because their hour had already left the window.
    pub stale_incs: AtomicU64,
    /// Records replayed by the rebuild at start, and how long it took.
    pub rebuilt_records: AtomicU64,
    pub rebuild_nanos: AtomicU64,
    /// Catch-up at start: log records of this shard still to replay into the aggregates
    /// (gauge), and 1 once every owner has applied everything up to the log's end at start.
    pub catchup_records: AtomicU64,
    pub complete: AtomicU64,
    /// 1 when the shard aggregates (`agg.enabled`), 0 when it only logs.
    pub enabled: AtomicU64,
    /// Records the catch-up needed that retention had already deleted.
    pub catchup_missing: AtomicU64,
    /// The aggregate store (`agg::store`): checkpoints written, their bytes, failed writes,
    /// damaged links found at start, and the newest durable checkpoint's wall clock (ns).
    pub checkpoints: AtomicU64,
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub checkpoint_nanos: AtomicU64,
    /// The longest encode of one checkpoint (the executor runs nothing else meanwhile).
    pub checkpoint_max_nanos: AtomicU64,
    pub store_problems: AtomicU64,
    pub checkpoint_last_ns: AtomicU64,
    /// Gauges: live cells, url cells and their table bytes, approximate heap bytes.
    pub cells: AtomicU64,
    pub url_cells: AtomicU64,
    pub url_cell_bytes: AtomicU64,
    pub memory_bytes: AtomicU64,
    /// `memory_bytes` by what it holds, indexed by [`MemPart`].
    pub memory_parts: [AtomicU64; MemPart::ALL.len()],
    /// The parser's url/referrer cache (`parse::event::cache`): lookups answered from it,
    /// normalisations done, and its heap bytes (published with the memory gauges).
    pub parse_cache_hits: AtomicU64,
    pub parse_cache_misses: AtomicU64,
    pub parse_cache_bytes: AtomicU64,
    /// JSON keys the parser's learned template foresaw, and keys it scanned
    /// (`parse::event::scan::Template`; published with the memory gauges).
    pub parse_keys_predicted: AtomicU64,
    pub parse_keys_scanned: AtomicU64,
    /// Gauges: sealed hour and day files mapped, and their bytes.
    pub sealed_files: AtomicU64,
    pub sealed_bytes: AtomicU64,
    /// Gauges: visitors whose recent visits are kept (`agg::visits`), and their bytes.
    pub visitors: AtomicU64,
    pub visitor_bytes: AtomicU64,
    /// Dimension values that became `(other)` past the cap (`agg::dims`), published by the
    /// ticker.
    pub dim_overflow: AtomicU64,
    /// Query durations: counts per bucket of [`QUERY_BUCKETS`] (+Inf last), and their sum.
    query_buckets: [AtomicU64; QUERY_BUCKETS.len() + 1],
    pub query_nanos: AtomicU64,
}

/// Upper bounds (seconds) of the query duration histogram buckets.
pub const QUERY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

impl AggStats {
    /// Counts a record's outcome (one writer: the router or recompute that owns these stats).
    pub fn count(&self, o: AggOutcome) {
        ShardStats::bump(&self.outcomes[o as usize], 1);
    }
    pub fn outcome(&self, o: AggOutcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }
    pub fn count_unparsed(&self, e: EventError) {
        self.count(AggOutcome::Unparsed);
        if let Some(i) = EventError::ALL.iter().position(|k| *k == e) {
            ShardStats::bump(&self.unparsed[i], 1);
        }
    }
    pub fn unparsed(&self, e: EventError) -> u64 {
        EventError::ALL
            .iter()
            .position(|k| *k == e)
            .map_or(0, |i| self.unparsed[i].load(Ordering::Relaxed))
    }
    pub fn observe_query(&self, seconds: f64) {
        let i = QUERY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(QUERY_BUCKETS.len());
        self.query_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.query_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
    pub fn query_buckets(&self) -> Vec<u64> {
        self.query_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// Counters of one shard's log.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub appended_events: CachePadded<AtomicU64>,
    pub appended_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos: AtomicU64,
    /// durable offset + 1; 0 when nothing is durable yet.
    durable_next: AtomicU64,
    pub segments_rolled: AtomicU64,
    /// Gauge: heap bytes of the log's batch builders (`log::writer`), set by the flusher.
    pub log_buffer_bytes: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    /// Sealed segments deleted by `retention_bytes_hard` before a pinned consumer read them.
    pub pinned_segments_deleted: AtomicU64,
    pub truncated_bytes: AtomicU64,
    pub corrupt_ranges: AtomicU64,
    pub indexes_rebuilt: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Events received, by transport (`Transport as usize`: import, udp, tcp, http).
    received_events: [AtomicU64; 4],
    received_bytes: [AtomicU64; 4],
    /// Receive failures, by transport: an accept that failed (TCP, HTTP) or a UDP receive
    /// that did (the socket is read on after a pause; see `ingest::udp`).
    receive_errors: [AtomicU64; 4],
    /// Lines whose syslog header did not parse, by kind (kept, flagged).
    parse_errors: [AtomicU64; PARSE_ERROR_KINDS.len()],
    /// Datagrams the kernel dropped on this shard's UDP socket (its `SO_MEMINFO` count).
    pub udp_kernel_drops: AtomicU64,
    /// TCP connections dropped for a framing error (bad octet count).
    pub tcp_framing_errors: AtomicU64,
    /// TCP connections refused at `tcp_max_connections`.
    pub tcp_refused: AtomicU64,
    /// HTTP connections refused at `http_max_connections`.
    pub http_refused: AtomicU64,
    /// TCP connections and HTTP ingest requests refused by `ingest.allowed_sources`.
    pub tcp_source_refused: AtomicU64,
    pub http_source_refused: AtomicU64,
    /// Open HTTP connections (gauge).
    pub http_connections: AtomicU64,
    /// Open TCP connections (gauge).
    pub tcp_connections: AtomicU64,
    /// fsync durations: counts per bucket of [`FSYNC_BUCKETS`] (+Inf last).
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    /// Routing and aggregates.
    pub agg: AggStats,
    /// When the shard's loop last ran its ticker (ns since the epoch): the watchdog's input.
    pub heartbeat_ns: AtomicU64,
    pub ready: AtomicBool,
    pub poisoned: AtomicBool,
    pub disk_full: AtomicBool,
    /// The shard's UDP receive ended on an error that says its socket is unusable (set by
    /// `ingest::udp::run`): it receives no UDP until pixeld restarts.
    pub udp_stopped: AtomicBool,
    /// HTTP requests refused with 401 (missing or wrong bearer token).
    pub http_unauthorized: AtomicU64,
    /// `/p.gif` requests answered 204 and not stored: a prefetch or prerender.
    pub http_pixel_prefetch: AtomicU64,
    /// `/p.gif` hits without `vid` stored without a derived one: the day's salt was unusable.
    pub http_pixel_no_salt: AtomicU64,
    /// `/p.gif` hits that met a full log queue: held for room (`pixel_overload = "wait"`),
    /// and dropped (the log refused them, after the wait if any).
    pub http_pixel_waited: AtomicU64,
    pub http_pixel_dropped: AtomicU64,
    /// Open `/v1/live` streams on this shard (gauge), and streams refused at
    /// `dashboard.live_max_clients`.
    pub live_clients: AtomicU64,
    pub live_refused: AtomicU64,
}

/// Upper bounds (seconds) of the fsync duration histogram buckets.
pub const FSYNC_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// The bounded `kind` values of `pixeld_parse_errors_total`, in the order of their counters.
pub const PARSE_ERROR_KINDS: [SyslogError; 9] = SyslogError::ALL;

impl ShardStats {
    /// A receive on `transport` failed (see [`ShardStats::receive_errors`]).
    pub fn count_receive_error(&self, transport: crate::transport::Transport) {
        self.receive_errors[transport as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn receive_errors(&self, transport: crate::transport::Transport) -> u64 {
        self.receive_errors[transport as usize].load(Ordering::Relaxed)
    }
    pub fn count_received(&self, transport: crate::transport::Transport, events: u64, bytes: u64) {
        let i = transport as usize;
        self.received_events[i].fetch_add(events, Ordering::Relaxed);
        self.received_bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn received(&self, transport: crate::transport::Transport) -> (u64, u64) {
        let i = transport as usize;
        (
            self.received_events[i].load(Ordering::Relaxed),
            self.received_bytes[i].load(Ordering::Relaxed),
        )
    }
    pub fn received_total(&self) -> u64 {
        self.received_events
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
    pub fn count_parse_error(&self, e: SyslogError) {
        if let Some(i) = PARSE_ERROR_KINDS.iter().position(|k| *k == e) {
            self.parse_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn parse_errors(&self, e: SyslogError) -> u64 {
        PARSE_ERROR_KINDS
            .iter()
            .position(|k| *k == e)
            .map_or(0, |i| self.parse_errors[i].load(Ordering::Relaxed))
    }
    pub fn observe_fsync(&self, seconds: f64) {
        let i = FSYNC_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(FSYNC_BUCKETS.len());
        if let Some(c) = self.fsync_buckets.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Non-cumulative bucket counts (the last is +Inf).
    pub fn fsync_buckets(&self) -> Vec<u64> {
        self.fsync_buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds `n` to a counter that only the calling thread writes: a plain load and store, not
    /// a locked read-modify-write (which costs ~20 cycles; the per-event counters of the
    /// routing path are bumped several times per event). Readers on other threads see a value
    /// that may lag by the last few bumps, never a torn one. Two writers would lose counts:
    /// use [`ShardStats::add`] for any counter another thread may write.
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason.slot()].fetch_add(n, Ordering::Relaxed);
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.slot()].load(Ordering::Relaxed)
    }
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    /// The highest offset that survives kill -9 and power loss, if any.
    pub fn durable_offset(&self) -> Option<u64> {
        self.durable_next.load(Ordering::Acquire).checked_sub(1)
    }
    pub fn set_durable_offset(&self, offset: u64) {
        self.durable_next.store(offset + 1, Ordering::Release);
    }
    pub fn flag(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
    pub fn set_flag(flag: &AtomicBool, v: bool) {
        flag.store(v, Ordering::Relaxed);
    }
}

/// Why the process is not ready (the first reason found), or None when every shard is
/// recovered, not poisoned and has disk space.
pub fn not_ready(all: &[std::sync::Arc<ShardStats>]) -> Option<String> {
    for (i, s) in all.iter().enumerate() {
        if ShardStats::flag(&s.poisoned) {
            return Some(format!("shard {i} is poisoned by a failed fsync"));
        }
        if ShardStats::flag(&s.disk_full) {
            return Some(format!("shard {i}: disk full"));
        }
        if ShardStats::flag(&s.udp_stopped) {
            return Some(format!(
                "shard {i}: its UDP socket failed and receives no more (see the log); restart pixeld"
            ));
        }
        if !ShardStats::flag(&s.ready) {
            return Some(format!("shard {i} is not ready (recovering or stopped)"));
        }
    }
    None
}

/// Whether every shard's aggregates are complete (the catch-up after a start is over).
pub fn aggregates_complete(all: &[std::sync::Arc<ShardStats>]) -> bool {
    all.iter().all(|s| ShardStats::get(&s.agg.complete) == 1)
}

/// Whether the shards aggregate (`agg.enabled`; false before any shard started).
pub fn aggregation_enabled(all: &[std::sync::Arc<ShardStats>]) -> bool {
    !all.is_empty() && all.iter().all(|s| ShardStats::get(&s.agg.enabled) == 1)
}

/// Log records still to replay into the aggregates, over all shards.
pub fn catchup_records(all: &[std::sync::Arc<ShardStats>]) -> u64 {
    all.iter()
        .map(|s| ShardStats::get(&s.agg.catchup_records))
        .sum()
}

/// Renders every shard's counters in the Prometheus text format (version 0.0.4). Counters
/// are summed over shards unless labelled by shard.
pub fn render(all: &[std::sync::Arc<ShardStats>]) -> String {
    use crate::transport::Transport;
    let mut p = Prom::with_capacity(8192);
    let sum = |f: &dyn Fn(&ShardStats) -> u64| all.iter().map(|s| f(s)).sum::<u64>();
    let counter = |p: &mut Prom, name: &str, help: &str, rows: Vec<(String, u64)>| {
        p.rows(name, Kind::Counter, help, rows);
    };
    let transports = [
        Transport::Import,
        Transport::Udp,
        Transport::Tcp,
        Transport::Http,
    ];
    counter(
        &mut p,
        "pixeld_received_events_total",
        "Events received, by transport.",
        transports
            .iter()
            .map(|t| {
                (
                    format!("{{transport=\"{}\"}}", t.as_str()),
                    sum(&|s| s.received(*t).0),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_received_bytes_total",
        "Bytes received, by transport.",
        transports
            .iter()
            .map(|t| {
                (
                    format!("{{transport=\"{}\"}}", t.as_str()),
                    sum(&|s| s.received(*t).1),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_appended_events_total",
        "Events written to the log.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.appended_events)))],
    );
    counter(
        &mut p,
        "pixeld_dropped_events_total",
        "Events not appended, by reason.",
        DropReason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    sum(&|s| s.dropped(*r)),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_parse_errors_total",
        "Lines whose syslog header did not parse (kept, flagged), by kind.",
        PARSE_ERROR_KINDS
            .iter()
            .map(|k| {
                (
                    format!("{{kind=\"{}\"}}", k.kind()),
                    sum(&|s| s.parse_errors(*k)),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_receive_errors_total",
        "Receives that failed, by transport: accepts (tcp, http) and UDP receives. Each is \
         logged; the shard pauses 50 ms and receives on.",
        transports[1..]
            .iter()
            .map(|t| {
                (
                    format!("{{transport=\"{}\"}}", t.as_str()),
                    sum(&|s| s.receive_errors(*t)),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_udp_kernel_drops_total",
        "Datagrams the kernel dropped on pixeld's UDP sockets (their SO_MEMINFO drop count).",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.udp_kernel_drops)),
        )],
    );
    counter(
        &mut p,
        "pixeld_tcp_framing_errors_total",
        "TCP connections closed for a bad octet count.",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.tcp_framing_errors)),
        )],
    );
    counter(
        &mut p,
        "pixeld_tcp_refused_total",
        "TCP connections refused at tcp_max_connections.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.tcp_refused)))],
    );
    counter(
        &mut p,
        "pixeld_source_refused_total",
        "TCP connections and HTTP ingest requests refused by ingest.allowed_sources (UDP datagrams: dropped{reason=\"source_not_allowed\"}).",
        vec![
            (
                "{transport=\"tcp\"}".to_string(),
                sum(&|s| ShardStats::get(&s.tcp_source_refused)),
            ),
            (
                "{transport=\"http\"}".to_string(),
                sum(&|s| ShardStats::get(&s.http_source_refused)),
            ),
        ],
    );
    counter(
        &mut p,
        "pixeld_http_refused_total",
        "HTTP connections refused at http_max_connections.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.http_refused)))],
    );
    counter(
        &mut p,
        "pixeld_log_written_bytes_total",
        "Bytes written to log segments (compressed).",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.written_bytes)))],
    );
    counter(
        &mut p,
        "pixeld_log_truncated_bytes_total",
        "Bytes of torn tail cut by recovery.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.truncated_bytes)))],
    );
    counter(
        &mut p,
        "pixeld_log_corrupt_ranges_total",
        "Corrupt ranges found in sealed segments at start.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.corrupt_ranges)))],
    );
    counter(
        &mut p,
        "pixeld_agg_records_total",
        "Appended records on their way to the aggregates, by outcome (they add up to the records appended and replayed).",
        AggOutcome::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{outcome=\"{}\"}}", r.as_str()),
                    sum(&|s| s.agg.outcome(*r)),
                )
            })
            .collect(),
    );
    counter(
        &mut p,
        "pixeld_agg_unparsed_total",
        "Logged records that are not analytics events, by kind.",
        EventError::ALL
            .iter()
            .map(|k| {
                (
                    format!("{{kind=\"{}\"}}", k.kind()),
                    sum(&|s| s.agg.unparsed(*k)),
                )
            })
            .collect(),
    );
    for (name, help, f) in [
        (
            "pixeld_agg_no_timestamp_total",
            "Events without a timestamp, aggregated at their receive time.",
            (|s: &ShardStats| ShardStats::get(&s.agg.no_timestamp)) as fn(&ShardStats) -> u64,
        ),
        (
            "pixeld_agg_bad_timestamp_total",
            "Events whose timestamp did not parse, aggregated at their receive time.",
            |s| ShardStats::get(&s.agg.bad_timestamp),
        ),
        (
            "pixeld_agg_bad_props_total",
            "Events whose props (read by a props.KEY custom dimension) are not a JSON object: those dimensions are (none).",
            |s| ShardStats::get(&s.agg.bad_props),
        ),
        (
            "pixeld_agg_invalid_utf8_total",
            "Events with invalid UTF-8 in a field (replaced by U+FFFD).",
            |s| ShardStats::get(&s.agg.invalid_utf8),
        ),
        (
            "pixeld_agg_no_vid_total",
            "Events without a visitor id (counted, not in uniques).",
            |s| ShardStats::get(&s.agg.no_vid),
        ),
        (
            "pixeld_agg_visit_too_late_total",
            "Visitors' pageviews and heartbeats received more than agg.visit_late_allowance after their event time: views and hits, not counted for visits.",
            |s| ShardStats::get(&s.agg.visit_too_late),
        ),
        (
            "pixeld_parse_cache_hits_total",
            "Urls and referrers whose normalised form came from the parser's cache.",
            |s| ShardStats::get(&s.agg.parse_cache_hits),
        ),
        (
            "pixeld_parse_cache_misses_total",
            "Urls and referrers decoded and normalised (not in the parser's cache).",
            |s| ShardStats::get(&s.agg.parse_cache_misses),
        ),
        (
            "pixeld_parse_keys_predicted_total",
            "Keys of JSON lines read where the template learned from the lines before foresaw them (the fast path).",
            |s| ShardStats::get(&s.agg.parse_keys_predicted),
        ),
        (
            "pixeld_parse_keys_scanned_total",
            "Keys of JSON lines the template did not foresee, scanned and looked up by name (a line of another shape; many of them: nginx's log_format changed, and the next line teaches a new template).",
            |s| ShardStats::get(&s.agg.parse_keys_scanned),
        ),
        (
            "pixeld_agg_stale_increments_total",
            "Increments whose hour had left the window when they arrived.",
            |s| ShardStats::get(&s.agg.stale_incs),
        ),
        (
            "pixeld_agg_rebuilt_records_total",
            "Records replayed from the log to rebuild the aggregates at start.",
            |s| ShardStats::get(&s.agg.rebuilt_records),
        ),
        (
            "pixeld_agg_checkpoints_total",
            "Checkpoints of the aggregates written durably (agg::store).",
            |s| ShardStats::get(&s.agg.checkpoints),
        ),
        (
            "pixeld_agg_checkpoint_bytes_total",
            "Bytes of the checkpoints written.",
            |s| ShardStats::get(&s.agg.checkpoint_bytes),
        ),
        (
            "pixeld_agg_checkpoint_failures_total",
            "Checkpoints that could not be written (the previous one stays; the next is a base).",
            |s| ShardStats::get(&s.agg.checkpoint_failures),
        ),
        (
            "pixeld_agg_store_problems_total",
            "Damaged or unusable checkpoint files found at start (reported on stderr).",
            |s| ShardStats::get(&s.agg.store_problems),
        ),
        (
            "pixeld_agg_catchup_missing_records_total",
            "Records the catch-up at start needed but retention had deleted.",
            |s| ShardStats::get(&s.agg.catchup_missing),
        ),
        (
            "pixeld_route_local_increments_total",
            "Increments applied on the shard that made them.",
            |s| ShardStats::get(&s.agg.local_incs),
        ),
        (
            "pixeld_route_queued_increments_total",
            "Increments made for another shard, put in its pending batch (at rest = sent + lost).",
            |s| ShardStats::get(&s.agg.queued_incs),
        ),
        (
            "pixeld_route_ticker_idle_waits_total",
            "Times the routing ticker had nothing pending for a peer and slept up to 50 ms instead of 2 ms.",
            |s| ShardStats::get(&s.agg.ticker_idle_waits),
        ),
        (
            "pixeld_route_ticker_woken_total",
            "Idle ticker sleeps ended early by the wake-up of an increment queued for a peer (its batch ships 2 ms later).",
            |s| ShardStats::get(&s.agg.ticker_woken),
        ),
        (
            "pixeld_agg_minutes_folded_total",
            "Minute buckets the ticker folded into their hours once they ended (an increment updates its minute alone until then).",
            |s| ShardStats::get(&s.agg.minutes_folded),
        ),
        (
            "pixeld_agg_fold_slices_total",
            "Partitions of a busy minute's url cells folded into their hour in slices, between other work (about 16 384 cells each).",
            |s| ShardStats::get(&s.agg.fold_slices),
        ),
        (
            "pixeld_route_sent_increments_total",
            "Increments shipped to their owner shard over a ring.",
            |s| ShardStats::get(&s.agg.sent_incs),
        ),
        (
            "pixeld_route_sent_batches_total",
            "Batches shipped over the rings.",
            |s| ShardStats::get(&s.agg.sent_batches),
        ),
        (
            "pixeld_route_applied_increments_total",
            "Increments received from other shards and applied.",
            |s| ShardStats::get(&s.agg.applied_incs),
        ),
        (
            "pixeld_route_lost_increments_total",
            "Increments not shipped because the owner shard had stopped (shutdown).",
            |s| ShardStats::get(&s.agg.lost_incs),
        ),
        (
            "pixeld_route_ring_full_waits_total",
            "Times a ring was full and ingest waited (backpressure).",
            |s| ShardStats::get(&s.agg.ring_full_waits),
        ),
    ] {
        counter(&mut p, name, help, vec![(String::new(), sum(&f))]);
    }
    p.counter(
        "pixeld_route_ring_wait_seconds_total",
        "Time ingest waited for ring room.",
        sum(&|s| ShardStats::get(&s.agg.ring_wait_nanos)) as f64 / 1e9,
    );
    p.counter(
        "pixeld_agg_fold_seconds_total",
        "Time the ticker spent folding ended minutes into their hours (the shard's executor does nothing else meanwhile).",
        sum(&|s| ShardStats::get(&s.agg.fold_nanos)) as f64 / 1e9,
    );
    p.gauge(
        "pixeld_agg_fold_pass_max_seconds",
        "The longest one folding pass held a shard's executor (a minute with many url cells is folded in slices over several passes).",
        all.iter()
            .map(|s| ShardStats::get(&s.agg.fold_max_nanos))
            .max()
            .unwrap_or(0) as f64
            / 1e9,
    );
    p.rows(
        "pixeld_agg_rebuild_seconds",
        Kind::Gauge,
        "How long the rebuild at start took, per shard.",
        all.iter().enumerate().map(|(i, s)| {
            (
                format!("{{shard=\"{i}\"}}"),
                ShardStats::get(&s.agg.rebuild_nanos) as f64 / 1e9,
            )
        }),
    );
    p.gauge(
        "pixeld_agg_catchup_records",
        "Log records still to replay into the aggregates after a start (0: complete).",
        sum(&|s| ShardStats::get(&s.agg.catchup_records)),
    );
    p.gauge(
        "pixeld_agg_complete",
        "1 when the aggregates hold every record of the log, 0 during the catch-up after a start (and when aggregation is off).",
        u64::from(aggregates_complete(all)),
    );
    p.gauge(
        "pixeld_agg_enabled",
        "1 when the shards aggregate, 0 when pixeld only logs (agg.enabled = false).",
        u64::from(aggregation_enabled(all)),
    );
    p.counter(
        "pixeld_agg_checkpoint_seconds_total",
        "Time spent copying and encoding checkpoints (the encode runs off the shard's executor).",
        sum(&|s| ShardStats::get(&s.agg.checkpoint_nanos)) as f64 / 1e9,
    );
    p.gauge(
        "pixeld_agg_checkpoint_encode_max_seconds",
        "The longest a checkpoint held a shard's executor (copying what it writes; nothing else runs on it meanwhile).",
        all.iter()
            .map(|s| ShardStats::get(&s.agg.checkpoint_max_nanos))
            .max()
            .unwrap_or(0) as f64
            / 1e9,
    );
    p.rows(
        "pixeld_agg_checkpoint_timestamp_seconds",
        Kind::Gauge,
        "Wall clock of each shard's newest durable checkpoint (0: none yet).",
        all.iter().enumerate().map(|(i, s)| {
            (
                format!("{{shard=\"{i}\"}}"),
                ShardStats::get(&s.agg.checkpoint_last_ns) as f64 / 1e9,
            )
        }),
    );
    p.gauge(
        "pixeld_agg_cells",
        "Live (bucket, key) cells of the aggregates.",
        sum(&|s| ShardStats::get(&s.agg.cells)),
    );
    p.gauge(
        "pixeld_agg_memory_bytes",
        "Approximate heap bytes of the aggregates (tables, sketches, key names).",
        sum(&|s| ShardStats::get(&s.agg.memory_bytes)),
    );
    p.rows(
        "pixeld_agg_memory_part_bytes",
        Kind::Gauge,
        "pixeld_agg_memory_bytes by what it holds: url cells, url visitors beyond the one inline, profile cells, url × channel and url × referrer cells, referrer, page and visits-by-profile cells, site cells with their uniques, interned names, visits in progress, other (they add up to pixeld_agg_memory_bytes).",
        MemPart::ALL.iter().map(|p| {
            (
                format!("{{part=\"{}\"}}", p.as_str()),
                sum(&|s| ShardStats::get(&s.agg.memory_parts[*p as usize])),
            )
        }),
    );
    p.gauge(
        "pixeld_agg_visitors",
        "Visitors whose recent visits are kept in memory (until agg.visit_gap + agg.visit_late_allowance after their last event).",
        sum(&|s| ShardStats::get(&s.agg.visitors)),
    );
    p.gauge(
        "pixeld_agg_visitor_bytes",
        "Heap bytes of the kept visits (included in pixeld_agg_memory_bytes).",
        sum(&|s| ShardStats::get(&s.agg.visitor_bytes)),
    );
    p.counter(
        "pixeld_agg_dim_overflow_total",
        "Pageviews whose value of a dimension was new past the cap of distinct values per dimension and shard (agg::dims::VALUE_CAP) and counted as (other).",
        sum(&|s| ShardStats::get(&s.agg.dim_overflow)),
    );
    p.gauge(
        "pixeld_parse_cache_bytes",
        "Heap bytes of the parser's url/referrer/user-agent caches (bounded: a fixed number of slots).",
        sum(&|s| ShardStats::get(&s.agg.parse_cache_bytes)),
    );
    p.gauge(
        "pixeld_agg_sealed_files",
        "Closed hours and days sealed into immutable files and mapped (agg/shard-NNN/sealed/).",
        sum(&|s| ShardStats::get(&s.agg.sealed_files)),
    );
    p.gauge(
        "pixeld_agg_sealed_bytes",
        "Bytes of the sealed hour and day files (read in place: page cache, not heap).",
        sum(&|s| ShardStats::get(&s.agg.sealed_bytes)),
    );
    let mut qb = vec![0u64; QUERY_BUCKETS.len() + 1];
    for s in all {
        for (b, v) in qb.iter_mut().zip(s.agg.query_buckets()) {
            *b += v;
        }
    }
    p.histogram(
        "pixeld_query_duration_seconds",
        "Query API request duration.",
        &QUERY_BUCKETS,
        &qb,
        sum(&|s| ShardStats::get(&s.agg.query_nanos)) as f64 / 1e9,
    );
    // fsync duration histogram, over all shards.
    let mut buckets = vec![0u64; FSYNC_BUCKETS.len() + 1];
    for s in all {
        for (b, v) in buckets.iter_mut().zip(s.fsync_buckets()) {
            *b += v;
        }
    }
    p.histogram(
        "pixeld_fsync_duration_seconds",
        "fdatasync duration.",
        &FSYNC_BUCKETS,
        &buckets,
        sum(&|s| ShardStats::get(&s.fsync_nanos)) as f64 / 1e9,
    );
    p.rows(
        "pixeld_durable_offset",
        Kind::Gauge,
        "Highest durable offset per shard (-1: none).",
        all.iter().enumerate().map(|(i, s)| {
            (
                format!("{{shard=\"{i}\"}}"),
                s.durable_offset().map_or(-1, |o| o as i64),
            )
        }),
    );
    counter(
        &mut p,
        "pixeld_log_segments_rolled_total",
        "Segments sealed and a new one started.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.segments_rolled)))],
    );
    p.gauge(
        "pixeld_log_buffer_bytes",
        "Memory held by the logs' batch buffers (the open batch, sealed ones waiting for the disk, a few kept for reuse), all shards.",
        sum(&|s| ShardStats::get(&s.log_buffer_bytes)) as f64,
    );
    counter(
        &mut p,
        "pixeld_log_segments_deleted_total",
        "Sealed segments deleted by retention (age or bytes).",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.segments_deleted)),
        )],
    );
    counter(
        &mut p,
        "pixeld_log_deleted_bytes_total",
        "Bytes of the segments retention deleted.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.bytes_deleted)))],
    );
    counter(
        &mut p,
        "pixeld_log_pinned_segments_deleted_total",
        "Sealed segments deleted by retention_bytes_hard before a consumer with retention_pin read them.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.pinned_segments_deleted)))],
    );
    p.gauge(
        "pixeld_tcp_connections",
        "Open TCP connections.",
        sum(&|s| ShardStats::get(&s.tcp_connections)),
    );
    p.gauge(
        "pixeld_http_connections",
        "Open HTTP connections.",
        sum(&|s| ShardStats::get(&s.http_connections)),
    );
    p.gauge(
        "pixeld_udp_receive_stopped",
        "Shards whose UDP receive ended on an error that says the socket is unusable: they \
         receive no UDP until pixeld restarts (the log says why; /readyz is 503).",
        all.iter()
            .filter(|s| ShardStats::flag(&s.udp_stopped))
            .count(),
    );
    p.gauge(
        "pixeld_ready",
        "Whether the process is ready (1) or not (0).",
        u8::from(not_ready(all).is_none()),
    );
    counter(
        &mut p,
        "pixeld_http_pixel_prefetch_total",
        "/p.gif requests of a prefetch or prerender (Sec-Purpose: prefetch), answered 204 and not stored.",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.http_pixel_prefetch)),
        )],
    );
    counter(
        &mut p,
        "pixeld_http_pixel_overload_total",
        "/p.gif hits that met a full log queue: waited for room (ingest.pixel_overload = \"wait\"), dropped (refused by the log, after the wait if any; also in pixeld_dropped_events_total).",
        vec![
            (
                "{outcome=\"waited\"}".to_string(),
                sum(&|s| ShardStats::get(&s.http_pixel_waited)),
            ),
            (
                "{outcome=\"dropped\"}".to_string(),
                sum(&|s| ShardStats::get(&s.http_pixel_dropped)),
            ),
        ],
    );
    counter(
        &mut p,
        "pixeld_http_pixel_no_salt_total",
        "/p.gif hits without vid stored without a derived visitor id because the day's salt could not be read or written (see the log).",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.http_pixel_no_salt)),
        )],
    );
    counter(
        &mut p,
        "pixeld_http_unauthorized_total",
        "HTTP requests refused for a missing or wrong bearer token.",
        vec![(
            String::new(),
            sum(&|s| ShardStats::get(&s.http_unauthorized)),
        )],
    );
    counter(
        &mut p,
        "pixeld_live_refused_total",
        "/v1/live streams refused at dashboard.live_max_clients.",
        vec![(String::new(), sum(&|s| ShardStats::get(&s.live_refused)))],
    );
    p.gauge(
        "pixeld_live_clients",
        "Open /v1/live streams.",
        sum(&|s| ShardStats::get(&s.live_clients)),
    );
    p.rows(
        "pixeld_build_info",
        Kind::Gauge,
        "Build information.",
        [(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    p.finish()
}

/// The numbers of the dashboard's health strip, read from the same counters as [`render`]
/// (sums over shards): events received, appended and dropped by reason, kernel UDP drops,
/// events received but not yet in the log (received − appended − dropped: what a crash now
/// could lose from the write-behind queue), per-shard durable offsets, readiness. Counters,
/// not rates: a client derives rates from two samples and their `t_ms`.
pub fn health(all: &[std::sync::Arc<ShardStats>], pixel_overload: &str) -> serde_json::Value {
    let sum = |f: &dyn Fn(&ShardStats) -> u64| all.iter().map(|s| f(s)).sum::<u64>();
    let received = sum(&|s| s.received_total());
    let appended = sum(&|s| ShardStats::get(&s.appended_events));
    let dropped = sum(&|s| s.dropped_total());
    let by_reason: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), sum(&|s| s.dropped(*r)).into()))
        .collect();
    serde_json::json!({
        "t_ms": crate::sys::now_ns() / 1_000_000,
        "shards": all.len(),
        "ready": not_ready(all).is_none(),
        "aggregates_complete": aggregates_complete(all),
        "catchup_records": catchup_records(all),
        "received_events_total": received,
        "appended_events_total": appended,
        "dropped_events_total": by_reason,
        "udp_kernel_drops_total": sum(&|s| ShardStats::get(&s.udp_kernel_drops)),
        "pending_events": received.saturating_sub(appended + dropped),
        "durable_offset": all.iter().map(|s| s.durable_offset().map_or(-1, |o| o as i64)).collect::<Vec<_>>(),
        "live_clients": sum(&|s| ShardStats::get(&s.live_clients)),
        // Bots' hits: left out of every metric (agg.bots = "exclude"), shown only here.
        "bot_hits_total": sum(&|s| s.agg.outcome(AggOutcome::Bot)),
        "pixel": {
            "overload": pixel_overload,
            "waited_total": sum(&|s| ShardStats::get(&s.http_pixel_waited)),
            "dropped_total": sum(&|s| ShardStats::get(&s.http_pixel_dropped)),
        },
    })
}

/// The `/metrics` families of the country database and the bot networks (None: not
/// configured).
pub fn render_geo(
    db: Option<&crate::parse::geo::GeoDb>,
    nets: Option<&crate::parse::networks::NetworksFile>,
) -> String {
    let st = db.map(crate::parse::geo::GeoDb::status).unwrap_or_default();
    let ns = nets
        .map(crate::parse::networks::NetworksFile::status)
        .unwrap_or_default();
    let mut p = Prom::with_capacity(512);
    p.gauge(
        "pixeld_geo_database_loaded",
        "1 when a country database ([geo] database) is in use, else 0 (countries are (unknown)).",
        u8::from(st.loaded.is_some()),
    )
    .gauge(
        "pixeld_geo_database_build_timestamp_seconds",
        "Build time of the country database in use (0: none).",
        st.build_epoch,
    )
    .rows(
        "pixeld_geo_reloads_total",
        Kind::Counter,
        "Reads of the country database's file, by result (an error keeps the previous database).",
        [
            ("{result=\"ok\"}".to_string(), st.loads),
            ("{result=\"error\"}".to_string(), st.failures),
        ],
    )
    .gauge(
        "pixeld_bot_networks_loaded",
        "Networks in the bot networks list in use ([geo] bot_networks; 0: none).",
        nets.map_or(0, |n| n.current().1.map_or(0, |l| l.listed() as u64)),
    )
    .rows(
        "pixeld_bot_networks_reloads_total",
        Kind::Counter,
        "Reads of the bot networks file, by result (an error keeps the previous list).",
        [
            ("{result=\"ok\"}".to_string(), ns.loads),
            ("{result=\"error\"}".to_string(), ns.failures),
        ],
    );
    p.finish()
}
