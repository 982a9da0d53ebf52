//! The readers' side of the durable logs: every shard's log directory (`log::fetch`), the
//! shards' published durable offsets and the named consumers' store, in one object shared by every shard's HTTP server and the Kafka export. Nothing here
//! touches a shard or knows HTTP: what can be read is what a shard published as durable.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::consumers::ConsumerStore;
use crate::log::fetch::ShardLog;
use crate::metrics::prom::{Kind, Prom};
use crate::metrics::ShardStats;

/// Every shard's durable log as readers outside the shards see it, shared by every shard's
/// HTTP server (the log API, consumers, metrics, readiness) and the Kafka export.
pub struct LogReaders {
    /// Every shard's log, by shard number.
    pub logs: Vec<ShardLog>,
    /// Every shard's counters: the durable offsets.
    pub all_stats: Arc<Vec<Arc<ShardStats>>>,
    pub consumers: Arc<ConsumerStore>,
    /// Set when the process stops: long polls answer at once.
    pub shutdown: Arc<AtomicBool>,
    /// A consumer that only its owner may commit or delete over the API (the Kafka export's,
    /// while the export is configured: its offsets move only with the broker's confirmations).
    pub reserved_consumer: Option<&'static str>,
}

impl LogReaders {
    /// One past the last durable offset of `shard` (0 when nothing is durable).
    pub fn durable_next(&self, shard: usize) -> u64 {
        self.all_stats
            .get(shard)
            .and_then(|s| s.durable_offset())
            .map_or(0, |o| o + 1)
    }

    /// Every shard's durable offset + 1.
    pub fn durable_nexts(&self) -> Vec<u64> {
        (0..self.all_stats.len())
            .map(|s| self.durable_next(s))
            .collect()
    }

    /// `pixeld_consumer_lag_records{consumer,shard}`: for every consumer, on every shard it
    /// has committed on, the durable records at or after its committed offset.
    pub fn render_metrics(&self) -> String {
        let mut rows = Vec::new();
        for c in self.consumers.list() {
            for (&shard, &offset) in &c.offsets {
                let lag = self.durable_next(shard).saturating_sub(offset);
                rows.push((
                    format!("{{consumer=\"{}\",shard=\"{shard}\"}}", c.name),
                    lag,
                ));
            }
        }
        let mut p = Prom::default();
        p.rows(
            "pixeld_consumer_lag_records",
            Kind::Gauge,
            "Durable records a named consumer has not committed, per shard.",
            rows,
        );
        p.finish()
    }
}
