//! The server: `supervisor` (`pixeld serve` on the main thread: lock, start, ready, signals,
//! shutdown), `shard` (one pinned glommio executor per core running ingest, log, routing and
//! aggregation for its share), `preflight` (system checks before anything binds) and
//! `activation` (listeners passed by systemd instead of bound).

pub mod activation;
pub mod preflight;
pub mod repartition;
pub mod shard;
pub mod supervisor;
