//! pixeld: a single-box ingest appliance for web-analytics pixel hits.
//!
//! The library holds everything; `main.rs` is only the CLI. Modules follow the data path:
//! `shard` (one glommio executor per core) → `ingest` (sockets) → `parse` → `log` (the
//! durable, segmented log each shard appends to) → `route` (increments to the owning shard
//! over SPSC rings) → `agg` (minute/hour counters, uniques, top-N) → `query` (the JSON API);
//! `replay`/`check`/`import` work on the log offline; `logapi` serves it over HTTP to named
//! `consumers`, and `tail` is their command-line client. See ARCHITECTURE.md for the whole path.

pub mod agg;
pub mod config;
pub mod consumers;
pub mod datadir;
pub mod export;
pub mod http;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod parse;
pub mod query;
pub mod readers;
pub mod route;
pub mod server;
pub mod sys;
pub mod tools;
pub mod transport;
