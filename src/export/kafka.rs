//! The Kafka exporter: one thread that reads every shard's durable log from its export offset
//! and produces each record as one message through librdkafka (the `rdkafka` crate), then
//! commits the export offsets (named consumer `kafka-export`) once the broker confirmed
//! everything below them.
//!
//! The thread is not a shard: it is not pinned, it blocks freely (log reads, offset fsyncs,
//! `poll`), and librdkafka runs its broker connections on threads of its own, so no shard
//! ever waits for it or for the broker. Per shard it keeps at most `max_uncommitted` records
//! produced beyond the committed offset, which bounds both its memory and the duplicates a
//! crash can cause. Deliveries come back through the producer context, tagged with
//! (shard, sequence number) packed into the opaque; a failed delivery holds the shard's
//! watermark, and once none of its records is in flight the shard rewinds to the watermark
//! and produces again after a backoff — at-least-once, never a gap. A fatal producer error
//! (an idempotence state the broker no longer accepts, e.g. after a broker lost its state)
//! recreates the producer and rewinds every shard.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::inflight::Inflight;
use super::{ErrorKind, ExportStats, KafkaExportConfig, KeyField, StartAt, CONSUMER_NAME};
use crate::log::fetch::FetchError;
use crate::log::reader::Start;
use crate::parse::event::{EventConfig, EventParser};
use crate::readers::LogReaders;

/// Errors that stop the export from starting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "export.kafka.topic {topic:?} does not exist on the brokers {brokers}; pixeld does not \
         create topics: create it (e.g. `kafka-topics.sh --create --topic {topic} --partitions N \
         --bootstrap-server {brokers}`) or fix export.kafka.topic"
    )]
    UnknownTopic { topic: String, brokers: String },
    #[error("cannot create the Kafka producer: {0}")]
    Producer(KafkaError),
    #[error("cannot store the export offsets (consumer {CONSUMER_NAME}): {0}")]
    Offsets(#[from] crate::consumers::ConsumerError),
    #[error("cannot start the export thread: {0}")]
    Thread(std::io::Error),
}

/// Bits of the delivery opaque that hold the sequence number; the shard is above them. A
/// shard's sequence numbers count the messages it produced this run: 2^48 of them (nine
/// years at a million per second) before they would wrap.
const SEQ_BITS: u32 = 48;
const SEQ_MASK: usize = (1 << SEQ_BITS) - 1;
/// Records produced per read of one shard, at most, before the others get their turn.
const CHUNK: u64 = 20_000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stop waits for in-flight messages to be confirmed.
const STOP_FLUSH: Duration = Duration::from_secs(5);
/// Repeated errors of one kind are printed at most this often.
const QUIET: Duration = Duration::from_secs(10);

/// What a delivery report said.
type Report = (usize, Result<(), (ErrorKind, String)>);

/// The producer's context: collects delivery reports and client errors for the export thread
/// (`poll` calls it on that thread; the lock is never contended).
struct Context {
    reports: Mutex<Vec<Report>>,
    stats: Arc<ExportStats>,
    fatal: AtomicBool,
    topic: String,
    printed: Mutex<Vec<(ErrorKind, Instant)>>,
}

impl Context {
    /// Prints `what` unless an error of the same kind was printed in the last [`QUIET`].
    fn say(&self, kind: ErrorKind, what: &str) {
        let mut p = self.printed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(slot) = p.iter_mut().find(|(k, _)| *k == kind) {
            if now.duration_since(slot.1) < QUIET {
                return;
            }
            slot.1 = now;
        } else {
            p.push((kind, now));
        }
        eprintln!("pixeld: export: {what} (repeats of this error are counted in pixeld_export_errors_total{{kind=\"{}\"}}, printed at most every {QUIET:?})", kind.as_str());
    }

    fn classify(&self, code: Option<RDKafkaErrorCode>) -> ErrorKind {
        match code {
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition,
            ) => ErrorKind::UnknownTopic,
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::BrokerNotAvailable,
            ) => ErrorKind::BrokerDown,
            Some(RDKafkaErrorCode::Fatal) => ErrorKind::Fatal,
            _ => ErrorKind::Delivery,
        }
    }
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let kind = self.classify(error.rdkafka_error_code());
        if kind == ErrorKind::Fatal {
            self.fatal.store(true, Ordering::Release);
        }
        self.stats.count_error(kind, 1);
        let what = format!("{error}: {reason}");
        self.stats.set_error(what.clone());
        self.say(kind, &what);
    }

    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {
        // librdkafka's own log lines repeat what `error` reports, once per connection
        // attempt; the errors above are counted and printed at a bounded rate instead.
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let r = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                let kind = match self.classify(e.rdkafka_error_code()) {
                    ErrorKind::Fatal | ErrorKind::BrokerDown => ErrorKind::Delivery,
                    k => k,
                };
                let what = if kind == ErrorKind::UnknownTopic {
                    format!("topic {:?} does not exist: {e}; create it", self.topic)
                } else {
                    e.to_string()
                };
                Err((kind, what))
            }
        };
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((opaque, r));
    }
}

type KafkaProducer = BaseProducer<Context>;

fn producer(
    cfg: &KafkaExportConfig,
    stats: &Arc<ExportStats>,
    shards: usize,
) -> Result<KafkaProducer, ExportError> {
    let ctx = Context {
        reports: Mutex::new(Vec::new()),
        stats: stats.clone(),
        fatal: AtomicBool::new(false),
        topic: cfg.topic.clone(),
        printed: Mutex::new(Vec::new()),
    };
    let mut client = cfg.client_config();
    // librdkafka's queue must hold what the shards may have in flight at once, or `send`
    // keeps answering QueueFull and every retry decompresses a batch again for a few records.
    if !cfg
        .properties
        .iter()
        .any(|(k, _)| k == "queue.buffering.max.messages")
    {
        let n = (shards as u64 * cfg.max_uncommitted + CHUNK).clamp(100_000, i32::MAX as u64);
        client.set("queue.buffering.max.messages", n.to_string());
    }
    client
        .create_with_context(ctx)
        .map_err(ExportError::Producer)
}

/// Checks at start that the topic exists. A broker that cannot be reached is not an error
/// here (ingest must start; the export retries and reports it): it returns a warning.
pub fn check_topic(cfg: &KafkaExportConfig) -> Result<Option<String>, ExportError> {
    let p: BaseProducer = cfg
        .client_config()
        .create()
        .map_err(ExportError::Producer)?;
    match p
        .client()
        .fetch_metadata(Some(&cfg.topic), Duration::from_secs(5))
    {
        Ok(m) => {
            let missing = m
                .topics()
                .iter()
                .find(|t| t.name() == cfg.topic)
                .is_none_or(|t| {
                    matches!(
                        t.error(),
                        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                    ) || t.partitions().is_empty()
                });
            if missing {
                Err(ExportError::UnknownTopic {
                    topic: cfg.topic.clone(),
                    brokers: cfg.brokers.clone(),
                })
            } else {
                Ok(None)
            }
        }
        Err(e) => Ok(Some(format!(
            "cannot reach the Kafka brokers {} to check topic {:?} ({e}); starting anyway: \
             the export retries and ingest goes on into the log",
            cfg.brokers, cfg.topic
        ))),
    }
}

/// One shard's export state.
struct ShardExport {
    shard: usize,
    flight: Inflight,
    /// The durable export offset.
    committed: u64,
    /// Set after a failed delivery: produce nothing until the in-flight reports are in and
    /// `retry_at` has passed, then rewind to the watermark.
    rewinding: bool,
    retry_at: Instant,
    backoff: Duration,
}

impl ShardExport {
    fn fail(&mut self, now: Instant) {
        if !self.rewinding {
            self.rewinding = true;
            self.retry_at = now + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The running exporter: its thread, stopped by the shared shutdown flag.
pub struct Exporter {
    join: std::thread::JoinHandle<()>,
}

impl Exporter {
    /// Starts the export thread. It waits until every shard has recovered, takes its start
    /// offsets from consumer `kafka-export` (creating it), and runs until `shutdown`.
    pub fn spawn(
        cfg: KafkaExportConfig,
        event: EventConfig,
        api: Arc<LogReaders>,
        stats: Arc<ExportStats>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Exporter, ExportError> {
        let join = std::thread::Builder::new()
            .name("pixeld-export".into())
            .spawn(move || {
                if let Err(e) = run(&cfg, event, &api, &stats, &shutdown) {
                    stats.set_error(e.to_string());
                    eprintln!("pixeld: export stopped: {e}; ingest goes on, restart pixeld to retry the export");
                }
            })
            .map_err(ExportError::Thread)?;
        Ok(Exporter { join })
    }

    /// Waits for the thread (after the shutdown flag is set).
    pub fn join(self) {
        let _ = self.join.join();
    }
}

fn run(
    cfg: &KafkaExportConfig,
    event: EventConfig,
    api: &LogReaders,
    stats: &Arc<ExportStats>,
    shutdown: &AtomicBool,
) -> Result<(), ExportError> {
    // The start offsets of a shard export has never seen depend on the recovered log.
    if !wait_for_shards(api, shutdown) {
        return Ok(());
    }
    let mut exports = start_offsets(cfg, api, stats)?;
    let shards = exports.len();
    let mut producer = producer(cfg, stats, shards)?;
    let mut pass = Pass {
        cfg,
        api,
        stats,
        labels: (0..shards).map(|s| s.to_string()).collect(),
        parser: EventParser::new(event),
    };
    let mut last_commit = Instant::now();
    let mut reports = Vec::new();
    let mut sent_this_run = 0u64;
    // When a delivery report last came, or records went out while none were in flight.
    let mut last_progress = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        let in_flight: usize = exports.iter().map(|e| e.flight.outstanding()).sum();
        if in_flight == 0 {
            last_progress = now;
        }
        if let Some(why) = stuck(
            cfg,
            stats,
            &producer,
            in_flight,
            now.duration_since(last_progress),
        ) {
            // The old producer's reports die with it: every shard rewinds to its watermark.
            last_progress = now;
            drop(producer);
            for e in &mut exports {
                e.flight.rewind();
                e.rewinding = false;
            }
            stats.set_error(why);
            std::thread::sleep(MIN_BACKOFF);
            producer = self::producer(cfg, stats, shards)?;
            continue;
        }
        let ctx = producer.context().clone();
        let mut produced_any = false;
        let mut queue_full = false;
        for e in &mut exports {
            if e.rewinding {
                if e.flight.outstanding() > 0 || now < e.retry_at {
                    continue;
                }
                e.flight.rewind();
                e.rewinding = false;
            }
            if queue_full {
                continue;
            }
            let (n, full) = pass.produce(e, &producer, &ctx, now);
            produced_any |= n > 0;
            queue_full |= full;
        }
        // Serve delivery reports: at once when there is more to produce, else wait a little
        // for reports or new durable records.
        producer.poll(if produced_any && !queue_full {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        });
        let now = Instant::now();
        let ok = take_reports(cfg, stats, &ctx, &mut exports, &mut reports, now);
        if ok.1 {
            last_progress = now;
        }
        if ok.0 > 0 {
            stats.delivered(ok.0);
            sent_this_run += ok.0;
        }
        for e in &exports {
            stats.set_delivered_next(e.shard, e.flight.watermark());
        }
        // Commit every interval, and early when a shard has used half of its
        // `max_uncommitted` allowance, so that the allowance never throttles the export.
        let half_used = exports.iter().any(|e| {
            e.flight.watermark().saturating_sub(e.committed) >= cfg.max_uncommitted.div_ceil(2)
        });
        if half_used || now.duration_since(last_commit) >= cfg.commit_interval {
            commit(api, stats, &ctx, &mut exports);
            last_commit = now;
        }
    }
    stop(api, stats, &producer, &mut exports, sent_this_run);
    Ok(())
}

/// Waits until every shard has recovered; false when the process stops first.
fn wait_for_shards(api: &LogReaders, shutdown: &AtomicBool) -> bool {
    while !api
        .all_stats
        .iter()
        .all(|s| crate::metrics::ShardStats::flag(&s.ready))
    {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Every shard's start: its committed export offset, or for a shard the export has never
/// seen, the first retained or the next durable offset (`export.kafka.start`), committed at
/// once so that the consumer pins retention from there.
fn start_offsets(
    cfg: &KafkaExportConfig,
    api: &LogReaders,
    stats: &ExportStats,
) -> Result<Vec<ShardExport>, ExportError> {
    let shards = api.logs.len();
    let stored = api.consumers.get(CONSUMER_NAME);
    let mut fresh = Vec::new();
    let mut exports = Vec::with_capacity(shards);
    for (shard, log) in api.logs.iter().enumerate() {
        let start = match stored.as_ref().and_then(|c| c.offsets.get(&shard)) {
            Some(&o) => o,
            None => {
                let o = match cfg.start {
                    StartAt::Earliest => log.first_offset().unwrap_or(0),
                    StartAt::Latest => api.durable_next(shard),
                };
                fresh.push((shard, o));
                o
            }
        };
        stats.set_delivered_next(shard, start);
        exports.push(ShardExport {
            shard,
            flight: Inflight::new(start),
            committed: start,
            rewinding: false,
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
        });
    }
    api.consumers.commit(CONSUMER_NAME, &fresh, Some(true))?;
    eprintln!(
        "pixeld: export: to Kafka topic {:?} on {} from offsets {:?} (consumer {CONSUMER_NAME})",
        cfg.topic,
        cfg.brokers,
        exports.iter().map(|e| e.committed).collect::<Vec<_>>()
    );
    Ok(exports)
}

/// Why the producer must be replaced, when it must: an idempotent producer that hit a fatal
/// error accepts nothing more, and one the broker keeps answering with errors it retries
/// forever (UNKNOWN_PRODUCER_ID from a broker that lost its state) never reports. Dropping it
/// purges what it held; every shard then rewinds to its watermark and sends again.
fn stuck(
    cfg: &KafkaExportConfig,
    stats: &ExportStats,
    producer: &KafkaProducer,
    in_flight: usize,
    since_progress: Duration,
) -> Option<String> {
    let fatal = producer.context().fatal.swap(false, Ordering::AcqRel);
    if !fatal && since_progress < cfg.stall_timeout {
        return None;
    }
    let why = if fatal {
        let why = producer
            .client()
            .fatal_error()
            .map_or_else(|| "unknown".to_string(), |(c, s)| format!("{c:?}: {s}"));
        format!("the producer hit a fatal error ({why})")
    } else {
        stats.count_error(ErrorKind::Stalled, 1);
        format!(
            "{in_flight} records in flight and no delivery report for {:?} (export.kafka.stall_timeout)",
            cfg.stall_timeout
        )
    };
    producer.context().say(
        if fatal {
            ErrorKind::Fatal
        } else {
            ErrorKind::Stalled
        },
        &format!("{why}; recreating the producer and re-sending from the last confirmed offsets"),
    );
    Some(why)
}

/// What producing needs besides the shards' state.
struct Pass<'a> {
    cfg: &'a KafkaExportConfig,
    api: &'a LogReaders,
    stats: &'a ExportStats,
    /// The `pixeld-shard` header values.
    labels: Vec<String>,
    /// Parses the key field out of each record.
    parser: EventParser,
}

impl Pass<'_> {
    /// Reads shard `e`'s durable records after what it has produced and produces them, within
    /// its `max_uncommitted` allowance; returns how many, and whether librdkafka's queue is
    /// full (nothing more should be produced before `poll`).
    fn produce(
        &mut self,
        e: &mut ShardExport,
        producer: &KafkaProducer,
        ctx: &Context,
        now: Instant,
    ) -> (u64, bool) {
        let Pass {
            cfg,
            api,
            stats,
            labels,
            parser,
        } = self;
        let durable = api.durable_next(e.shard);
        let uncommitted = e.flight.read_end().saturating_sub(e.committed);
        let budget = cfg.max_uncommitted.saturating_sub(uncommitted).min(CHUNK);
        if budget == 0 || e.flight.read_end() >= durable {
            return (0, false);
        }
        let mut n = 0u64;
        let mut queue_full = false;
        let from = e.flight.read_end();
        let read = api.logs[e.shard].read_durable(
            Start::Offset(from),
            durable,
            |rec| {
                let key: Option<&str> = match cfg.key {
                    KeyField::None => None,
                    k => parser.parse(rec.bytes).ok().and_then(|ev| {
                        let v = match k {
                            KeyField::Url => ev.url,
                            KeyField::Site => ev.site,
                            _ => ev.vid,
                        };
                        (!v.is_empty()).then_some(v)
                    }),
                };
                let mut offset_buf = itoa::Buffer::new();
                let mut recv_buf = itoa::Buffer::new();
                let offset = offset_buf.format(rec.offset);
                let recv = recv_buf.format(rec.recv_ts);
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header {
                        key: "pixeld-shard",
                        value: Some(labels[e.shard].as_str()),
                    })
                    .insert(Header {
                        key: "pixeld-offset",
                        value: Some(offset),
                    })
                    .insert(Header {
                        key: "pixeld-recv-ts",
                        value: Some(recv),
                    })
                    .insert(Header {
                        key: "pixeld-host",
                        value: Some(cfg.host.as_str()),
                    });
                let seq = e.flight.next_seq();
                let opaque = (e.shard << SEQ_BITS) | (seq as usize & SEQ_MASK);
                let mut record = BaseRecord::<str, [u8], usize>::with_opaque_to(&cfg.topic, opaque)
                    .payload(rec.bytes)
                    .headers(headers)
                    .timestamp((rec.recv_ts / 1_000_000) as i64);
                if let Some(k) = key {
                    record = record.key(k);
                }
                match producer.send(record) {
                    Ok(()) => {
                        e.flight.push(rec.offset);
                        n += 1;
                        if n >= budget {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    }
                    Err((err, _)) => {
                        match err.rdkafka_error_code() {
                            Some(RDKafkaErrorCode::QueueFull) => {
                                // librdkafka's queue is full: let `poll` drain
                                // deliveries, and come back to this record.
                                queue_full = true;
                            }
                            Some(
                                RDKafkaErrorCode::MessageSizeTooLarge
                                | RDKafkaErrorCode::InvalidMessageSize,
                            ) => {
                                // This record can never be sent: count it as skipped,
                                // loudly, instead of stalling the shard forever.
                                e.flight.skip_to(rec.offset + 1);
                                stats.skipped.fetch_add(1, Ordering::Relaxed);
                                stats.count_error(ErrorKind::Produce, 1);
                                ctx.say(
                                    ErrorKind::Produce,
                                    &format!(
                                        "shard {} offset {} ({} bytes) is larger than the producer's message.max.bytes: SKIPPED, counted in pixeld_export_skipped_records_total; raise message.max.bytes in [export.kafka.properties] and on the topic",
                                        e.shard, rec.offset, rec.bytes.len()
                                    ),
                                );
                                n += 1;
                                return ControlFlow::Continue(());
                            }
                            _ => {
                                stats.count_error(ErrorKind::Produce, 1);
                                stats.set_error(err.to_string());
                                ctx.say(ErrorKind::Produce, &format!("cannot produce: {err}"));
                                queue_full = true;
                            }
                        }
                        ControlFlow::Break(())
                    }
                }
            },
            |w| {
                stats.count_error(ErrorKind::LogRead, 1);
                eprintln!(
                    "pixeld: export: {}; the unreadable records are not exported",
                    crate::log::ndjson::describe_warning(e.shard, &w)
                );
            },
        );
        match read {
            Ok(end) => {
                // A read that ended past unreadable records moves on without them.
                if !queue_full && n < budget {
                    e.flight.skip_to(end.next_offset);
                }
            }
            Err(FetchError::OutOfRange {
                offset,
                first_offset,
                ..
            }) if offset < first_offset => {
                let lost = first_offset - offset;
                stats.skipped.fetch_add(lost, Ordering::Relaxed);
                stats.set_error(format!(
                    "shard {} offsets {offset}..{first_offset} deleted before export",
                    e.shard
                ));
                eprintln!(
                    "pixeld: export: shard {} offsets {offset}..{first_offset} ({lost} records) were deleted by retention (log.retention_bytes_hard) before the export delivered them: SKIPPED, counted in pixeld_export_skipped_records_total; the broker was too slow or down for too long for the disk",
                    e.shard
                );
                e.flight.skip_to(first_offset);
            }
            Err(err) => {
                stats.count_error(ErrorKind::LogRead, 1);
                stats.set_error(err.to_string());
                ctx.say(ErrorKind::LogRead, &format!("shard {}: {err}", e.shard));
                e.fail(now);
            }
        }
        (n, queue_full)
    }
}

/// Takes the delivery reports `poll` collected: confirms, or rewinds a shard whose delivery
/// failed. Returns the records confirmed and whether any report came.
fn take_reports(
    cfg: &KafkaExportConfig,
    stats: &ExportStats,
    ctx: &Context,
    exports: &mut [ShardExport],
    reports: &mut Vec<Report>,
    now: Instant,
) -> (u64, bool) {
    std::mem::swap(
        reports,
        &mut *ctx.reports.lock().unwrap_or_else(|e| e.into_inner()),
    );
    let mut ok = 0u64;
    let any = !reports.is_empty();
    for (opaque, r) in reports.drain(..) {
        let Some(e) = exports.get_mut(opaque >> SEQ_BITS) else {
            continue;
        };
        let seq = (opaque & SEQ_MASK) as u64;
        match r {
            Ok(()) => {
                if e.flight.confirm(seq) {
                    ok += 1;
                    if !e.rewinding {
                        e.backoff = MIN_BACKOFF;
                    }
                }
            }
            Err((kind, what)) => {
                if e.flight.fail(seq) {
                    stats.count_error(kind, 1);
                    stats.set_error(what.clone());
                    ctx.say(kind, &format!("delivery to topic {:?} failed: {what}; re-sending shard {} from offset {}", cfg.topic, e.shard, e.flight.watermark()));
                    e.fail(now);
                }
            }
        }
    }
    (ok, any)
}

/// Stop: stop producing, give the broker a moment to confirm what is in flight, then commit
/// what it confirmed. The rest is sent again at the next start.
fn stop(
    api: &LogReaders,
    stats: &ExportStats,
    producer: &KafkaProducer,
    exports: &mut [ShardExport],
    mut sent_this_run: u64,
) {
    let _ = producer.flush(STOP_FLUSH);
    producer.poll(Duration::ZERO);
    let mut ok = 0;
    for (opaque, r) in producer
        .context()
        .reports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        if let (Some(e), Ok(())) = (exports.get_mut(opaque >> SEQ_BITS), r) {
            if e.flight.confirm((opaque & SEQ_MASK) as u64) {
                ok += 1;
            }
        }
    }
    stats.delivered(ok);
    sent_this_run += ok;
    commit(api, stats, producer.context(), exports);
    eprintln!(
        "pixeld: export: stopped: {sent_this_run} records confirmed this run; export offsets {:?}",
        exports.iter().map(|e| e.committed).collect::<Vec<_>>()
    );
}

/// Commits every shard's watermark that moved.
fn commit(api: &LogReaders, stats: &ExportStats, ctx: &Context, exports: &mut [ShardExport]) {
    let moved: Vec<(usize, u64)> = exports
        .iter()
        .filter(|e| e.flight.watermark() > e.committed)
        .map(|e| (e.shard, e.flight.watermark()))
        .collect();
    if moved.is_empty() {
        return;
    }
    match api.consumers.commit(CONSUMER_NAME, &moved, Some(true)) {
        Ok(_) => {
            for (shard, o) in moved {
                exports[shard].committed = o;
            }
        }
        Err(e) => {
            stats.count_error(ErrorKind::Commit, 1);
            stats.set_error(e.to_string());
            ctx.say(
                ErrorKind::Commit,
                &format!("cannot store the export offsets: {e}; retrying (a restart now would re-send more)"),
            );
        }
    }
}
