//! The server: `supervisor` (`pixeld serve` on the main thread: lock, start, ready, signals,
//! shutdown), `shard` (one pinned glommio executor per core running ingest, log, routing and
//! aggregation for its share) and `preflight` (system checks before anything binds).

pub mod preflight;
pub mod shard;
pub mod supervisor;
