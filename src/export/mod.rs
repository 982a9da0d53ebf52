//! Export of the log to other systems — today, to a Kafka topic (`kafka`): what
//! `[export.kafka]` configures, the counters `/metrics` and `/readyz` report, and the
//! bookkeeping of what the broker has confirmed (`inflight`).
//!
//! Export is a reader of the log like any named consumer (it is one: `kafka-export`, with a
//! retention pin), running on a thread of its own with librdkafka's threads beside it, never
//! on a shard's executor: a slow or absent broker can delay the export, never ingest. Its
//! durable export offset per shard moves only past records the broker confirmed, so a crash
//! re-sends at most what was produced beyond the last commit — `max_uncommitted` records per
//! shard — and loses nothing (docs/scale-out.md).

pub mod inflight;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::prom::{Kind, Prom};

/// The named consumer whose offsets are the export offsets.
pub const CONSUMER_NAME: &str = "kafka-export";

/// `[export]` as written: absent tables mean no export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<RawKafka>,
}

/// A librdkafka property value: TOML strings, integers and booleans are all accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl PropertyValue {
    fn as_string(&self) -> String {
        match self {
            PropertyValue::Text(s) => s.clone(),
            PropertyValue::Int(n) => n.to_string(),
            PropertyValue::Bool(b) => b.to_string(),
        }
    }
}

fn default_key() -> String {
    "url".into()
}
fn default_compression() -> String {
    "zstd".into()
}
fn default_start() -> String {
    "earliest".into()
}
fn default_max_uncommitted() -> u64 {
    100_000
}
fn default_commit_interval() -> String {
    "1s".into()
}
fn default_stall_timeout() -> String {
    "30s".into()
}

/// `[export.kafka]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub brokers: String,
    pub topic: String,
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default = "default_max_uncommitted")]
    pub max_uncommitted: u64,
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

/// What a message's key is, parsed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    Url,
    Site,
    Vid,
    None,
}

/// Where the export starts on a shard it has never exported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record.
    Earliest,
    /// The end of the log when export first runs.
    Latest,
}

/// Properties pixeld sets itself from other keys; setting them in `properties` is refused.
const OWN_PROPERTIES: [(&str, &str); 4] = [
    ("bootstrap.servers", "export.kafka.brokers"),
    ("metadata.broker.list", "export.kafka.brokers"),
    ("compression.type", "export.kafka.compression"),
    ("compression.codec", "export.kafka.compression"),
];

/// Validated `[export.kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaExportConfig {
    pub brokers: String,
    pub topic: String,
    pub key: KeyField,
    pub compression: String,
    pub start: StartAt,
    /// Records per shard produced beyond the durable export offset, at most: the bound on the
    /// duplicates a crash can cause.
    pub max_uncommitted: u64,
    pub commit_interval: Duration,
    /// Records in flight with no delivery report for this long: the producer is recreated.
    pub stall_timeout: Duration,
    /// The `pixeld-host` header.
    pub host: String,
    /// librdkafka properties, pixeld's defaults overlaid with the user's.
    pub properties: Vec<(String, String)>,
}

/// A field of `[export.kafka]` and what is wrong with it.
#[derive(Debug)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: String) -> Invalid {
    Invalid { field, reason }
}

impl KafkaExportConfig {
    pub fn from_raw(raw: &RawKafka) -> Result<Self, Invalid> {
        let brokers = raw.brokers.trim().to_string();
        if brokers.is_empty() || brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(invalid(
                "export.kafka.brokers",
                format!(
                    "is {:?}; write host:port pairs separated by commas, e.g. \"10.0.0.5:9092,10.0.0.6:9092\"",
                    raw.brokers
                ),
            ));
        }
        let topic = raw.topic.trim();
        // Kafka's own rule for topic names.
        if topic.is_empty()
            || topic.len() > 249
            || topic == "."
            || topic == ".."
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "export.kafka.topic",
                format!("is {:?}; a Kafka topic name is 1-249 characters of letters, digits, '.', '_' and '-'", raw.topic),
            ));
        }
        let key = match raw.key.as_str() {
            "url" => KeyField::Url,
            "site" => KeyField::Site,
            "vid" => KeyField::Vid,
            "none" => KeyField::None,
            k => {
                return Err(invalid(
                    "export.kafka.key",
                    format!("is {k:?}, must be \"url\", \"site\", \"vid\" or \"none\""),
                ))
            }
        };
        let compression = match raw.compression.as_str() {
            c @ ("none" | "lz4" | "zstd") => c.to_string(),
            c => {
                return Err(invalid(
                    "export.kafka.compression",
                    format!("is {c:?}, must be \"none\", \"lz4\" or \"zstd\""),
                ))
            }
        };
        let start = match raw.start.as_str() {
            "earliest" => StartAt::Earliest,
            "latest" => StartAt::Latest,
            s => {
                return Err(invalid(
                    "export.kafka.start",
                    format!("is {s:?}, must be \"earliest\" or \"latest\""),
                ))
            }
        };
        if !(1..=10_000_000).contains(&raw.max_uncommitted) {
            return Err(invalid(
                "export.kafka.max_uncommitted",
                format!("is {}, must be between 1 and 10000000", raw.max_uncommitted),
            ));
        }
        let between = |field: &'static str, s: &str, min: Duration, max: Duration| {
            humantime::parse_duration(s.trim())
                .ok()
                .filter(|d| *d >= min && *d <= max)
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!(
                            "is {s:?}, must be a duration between \"{}\" and \"{}\"",
                            humantime::format_duration(min),
                            humantime::format_duration(max)
                        ),
                    )
                })
        };
        let commit_interval = between(
            "export.kafka.commit_interval",
            &raw.commit_interval,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        let stall_timeout = between(
            "export.kafka.stall_timeout",
            &raw.stall_timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        let host = match raw.host.trim() {
            "" => hostname(),
            h => h.to_string(),
        };
        let mut properties: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), brokers.clone()),
            ("compression.type".into(), compression.clone()),
            // zstd's level 1, as in the log: librdkafka's default (3) doubles the CPU the
            // producer spends compressing, for a few percent of size.
            (
                "compression.level".into(),
                if compression == "zstd" { "1" } else { "-1" }.into(),
            ),
            ("acks".into(), "all".into()),
            ("enable.idempotence".into(), "true".into()),
            // pixeld never assumes a topic springs into being: a missing topic is an error.
            ("allow.auto.create.topics".into(), "false".into()),
            ("client.id".into(), format!("pixeld-{host}")),
        ];
        for (k, v) in &raw.properties {
            if let Some((_, instead)) = OWN_PROPERTIES.iter().find(|(p, _)| p == k) {
                return Err(invalid(
                    "export.kafka.properties",
                    format!("sets {k:?}; set `{instead}` instead"),
                ));
            }
            let v = v.as_string();
            match properties.iter_mut().find(|(p, _)| p == k) {
                Some(slot) => slot.1 = v,
                None => properties.push((k.clone(), v)),
            }
        }
        let cfg = KafkaExportConfig {
            brokers,
            topic: topic.to_string(),
            key,
            compression,
            start,
            max_uncommitted: raw.max_uncommitted,
            commit_interval,
            stall_timeout,
            host,
            properties,
        };
        // librdkafka checks every property's name and value without connecting anywhere.
        #[cfg(feature = "kafka")]
        cfg.client_config().create_native_config().map_err(|e| {
            invalid(
                "export.kafka.properties",
                format!("refused by librdkafka: {e}"),
            )
        })?;
        #[cfg(not(feature = "kafka"))]
        let _ = cfg;
        #[cfg(not(feature = "kafka"))]
        return Err(invalid(
            "export.kafka",
            "is set, but this pixeld was built without the Kafka export (cargo feature `kafka`); \
             rebuild with default features, or remove [export.kafka]"
                .into(),
        ));
        #[cfg(feature = "kafka")]
        Ok(cfg)
    }

    /// The producer's librdkafka configuration.
    #[cfg(feature = "kafka")]
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// This machine's host name (for the `pixeld-host` header), or "localhost" when it has none.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Why the export counted an error (the `kind` label of `pixeld_export_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No broker reachable, or a connection to one failed.
    BrokerDown,
    /// The broker did not confirm a message (after librdkafka's own retries).
    Delivery,
    /// The topic does not exist on the brokers.
    UnknownTopic,
    /// The producer refused a message outright (e.g. larger than `message.max.bytes`).
    Produce,
    /// The producer hit a fatal error and was recreated.
    Fatal,
    /// Records were in flight with no delivery report for `stall_timeout`; the producer was
    /// recreated (e.g. a broker that lost its idempotent-producer state answers
    /// UNKNOWN_PRODUCER_ID forever).
    Stalled,
    /// Reading the log failed.
    LogRead,
    /// Storing the export offset failed.
    Commit,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::BrokerDown,
        ErrorKind::Delivery,
        ErrorKind::UnknownTopic,
        ErrorKind::Produce,
        ErrorKind::Fatal,
        ErrorKind::Stalled,
        ErrorKind::LogRead,
        ErrorKind::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BrokerDown => "broker_down",
            ErrorKind::Delivery => "delivery",
            ErrorKind::UnknownTopic => "unknown_topic",
            ErrorKind::Produce => "produce",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Stalled => "stalled",
            ErrorKind::LogRead => "log_read",
            ErrorKind::Commit => "commit",
        }
    }
}

/// The export's counters, written by its thread, read by `/metrics` and `/readyz` on any shard.
#[derive(Debug)]
pub struct ExportStats {
    pub topic: String,
    /// Records the broker confirmed (this run).
    pub sent: AtomicU64,
    /// Records never exported: deleted by retention past `retention_bytes_hard` before export
    /// read them, or refused by the producer outright.
    pub skipped: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Per shard: every record below this offset is confirmed by the broker.
    delivered_next: Vec<AtomicU64>,
    /// When a delivery last succeeded (ns since the epoch).
    last_ok_ns: AtomicU64,
    /// The last error: when the errors since the last success began, when this one came, and
    /// what it said.
    last_error: Mutex<Option<(u64, u64, String)>>,
}

impl ExportStats {
    pub fn new(topic: &str, shards: usize) -> Self {
        ExportStats {
            topic: topic.to_string(),
            sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: Default::default(),
            delivered_next: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            last_ok_ns: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn count_error(&self, kind: ErrorKind, n: u64) {
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.errors[i].load(Ordering::Relaxed))
    }

    /// Remembers `what` as the last error (shown by `/readyz` until a delivery succeeds).
    pub fn set_error(&self, what: String) {
        let now = crate::sys::now_ns();
        let ok = self.last_ok_ns.load(Ordering::Relaxed);
        let mut e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let since = match &*e {
            Some((since, at, _)) if *at >= ok => *since,
            _ => now,
        };
        *e = Some((since, now, what));
    }

    pub fn delivered(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.last_ok_ns
            .store(crate::sys::now_ns(), Ordering::Relaxed);
    }

    pub fn set_delivered_next(&self, shard: usize, next: u64) {
        if let Some(a) = self.delivered_next.get(shard) {
            a.store(next, Ordering::Relaxed);
        }
    }

    /// Records durable on `shard` that the broker has not confirmed.
    pub fn lag(&self, shard: usize, durable_next: u64) -> u64 {
        let d = self
            .delivered_next
            .get(shard)
            .map_or(0, |a| a.load(Ordering::Relaxed));
        durable_next.saturating_sub(d)
    }

    /// The export's line of `/readyz`: `ok` or `degraded` with the last error, and the lag.
    /// The export never makes pixeld unready — ingest goes on into the log whatever the broker
    /// does — so this is a detail, not a verdict.
    pub fn readiness(&self, durable_next: &[u64]) -> String {
        let lag: u64 = (0..durable_next.len())
            .map(|s| self.lag(s, durable_next[s]))
            .sum();
        let ok_ns = self.last_ok_ns.load(Ordering::Relaxed);
        let e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match &*e {
            Some((since, at, what)) if *at >= ok_ns => format!(
                "export kafka topic {:?}: degraded for {}s: {what}; {lag} records not yet delivered (retrying)",
                self.topic,
                crate::sys::now_ns().saturating_sub(*since) / 1_000_000_000
            ),
            _ => format!(
                "export kafka topic {:?}: ok; {lag} records not yet delivered",
                self.topic
            ),
        }
    }

    /// The export's metrics, in the Prometheus text format.
    pub fn render(&self, durable_next: &[u64]) -> String {
        let mut p = Prom::default();
        p.rows(
            "pixeld_export_lag_records",
            Kind::Gauge,
            "Durable records the Kafka broker has not confirmed, per shard.",
            durable_next
                .iter()
                .enumerate()
                .map(|(s, &d)| (format!("{{shard=\"{s}\"}}"), self.lag(s, d))),
        )
        .counter(
            "pixeld_export_sent_total",
            "Records the Kafka broker confirmed since start.",
            self.sent.load(Ordering::Relaxed),
        )
        .rows(
            "pixeld_export_errors_total",
            Kind::Counter,
            "Errors of the Kafka export, by kind.",
            ErrorKind::ALL
                .iter()
                .map(|k| (format!("{{kind=\"{}\"}}", k.as_str()), self.errors(*k))),
        )
        .counter(
            "pixeld_export_skipped_records_total",
            "Records never exported: deleted by retention_bytes_hard before export read them, or refused by the producer.",
            self.skipped.load(Ordering::Relaxed),
        );
        p.finish()
    }
}

#[cfg(test)]
#[cfg(feature = "kafka")]
mod tests {
    use super::*;

    fn raw() -> RawKafka {
        toml::from_str("brokers = \"127.0.0.1:9092\"\ntopic = \"pixeld-hits\"").unwrap()
    }

    #[test]
    fn defaults_and_properties() {
        let mut r = raw();
        r.properties
            .insert("linger.ms".into(), PropertyValue::Int(20));
        r.properties
            .insert("acks".into(), PropertyValue::Text("1".into()));
        let c = KafkaExportConfig::from_raw(&r).unwrap();
        assert_eq!((c.key, c.start), (KeyField::Url, StartAt::Earliest));
        assert_eq!(c.max_uncommitted, 100_000);
        let get = |k: &str| {
            c.properties
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("acks"), Some("1"), "the user's value wins");
        assert_eq!(get("enable.idempotence"), Some("true"));
        assert_eq!(get("linger.ms"), Some("20"));
        assert_eq!(get("compression.type"), Some("zstd"));
        assert_eq!(get("allow.auto.create.topics"), Some("false"));
    }

    #[test]
    fn errors_name_the_field() {
        type Spoil = fn(&mut RawKafka);
        let cases: [(&str, Spoil); 9] = [
            ("export.kafka.stall_timeout", |r| {
                r.stall_timeout = "2h".into()
            }),
            ("export.kafka.brokers", |r| r.brokers = " ".into()),
            ("export.kafka.topic", |r| r.topic = "a b".into()),
            ("export.kafka.key", |r| r.key = "referrer".into()),
            ("export.kafka.compression", |r| {
                r.compression = "gzip".into()
            }),
            ("export.kafka.start", |r| r.start = "middle".into()),
            ("export.kafka.max_uncommitted", |r| r.max_uncommitted = 0),
            ("export.kafka.commit_interval", |r| {
                r.commit_interval = "1us".into()
            }),
            ("export.kafka.properties", |r| {
                r.properties
                    .insert("linger.ms".into(), PropertyValue::Text("soon".into()));
            }),
        ];
        for (field, spoil) in cases {
            let mut r = raw();
            spoil(&mut r);
            let e = KafkaExportConfig::from_raw(&r).unwrap_err();
            assert_eq!(e.field, field, "{}", e.reason);
        }
        let mut r = raw();
        r.properties.insert(
            "bootstrap.servers".into(),
            PropertyValue::Text("x:1".into()),
        );
        let e = KafkaExportConfig::from_raw(&r).unwrap_err();
        assert!(e.reason.contains("export.kafka.brokers"), "{}", e.reason);
    }

    #[test]
    fn readiness_and_metrics() {
        let s = ExportStats::new("t", 2);
        s.set_delivered_next(0, 5);
        assert_eq!(s.lag(0, 8), 3);
        assert!(s.readiness(&[8, 0]).contains(": ok; 3 records"));
        s.set_error("all brokers down".into());
        assert!(s.readiness(&[8, 0]).contains("degraded"));
        s.delivered(1);
        assert!(s.readiness(&[8, 0]).contains(": ok"));
        s.count_error(ErrorKind::Delivery, 2);
        let m = s.render(&[8, 0]);
        assert!(m.contains("pixeld_export_lag_records{shard=\"0\"} 3"));
        assert!(m.contains("pixeld_export_errors_total{kind=\"delivery\"} 2"));
        assert!(m.contains("pixeld_export_sent_total 1"));
    }
}

/// Built without the `kafka` feature (`scripts/test` runs the unit tests so too), a config
/// that asks for the export is refused, and the error says how to get it.
#[cfg(test)]
#[cfg(not(feature = "kafka"))]
mod tests_without_kafka {
    use super::*;

    #[test]
    fn a_kafka_export_is_refused_naming_the_feature() {
        let raw: RawKafka =
            toml::from_str("brokers = \"127.0.0.1:9092\"\ntopic = \"pixeld-hits\"").unwrap();
        let e = KafkaExportConfig::from_raw(&raw).unwrap_err();
        assert_eq!(e.field, "export.kafka");
        assert!(e.reason.contains("cargo feature `kafka`"), "{}", e.reason);
    }
}
