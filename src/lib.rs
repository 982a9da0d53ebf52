//! pixeld: a single-box ingest appliance for web-analytics pixel hits.
//!
//! The library holds everything; `main.rs` is only the CLI. Modules follow the data path:
//! `server` (the supervisor and one glommio executor per core) → `ingest` (sockets and
//! framing) → `parse` → `log` (the durable, segmented log each shard appends to) → `route`
//! (increments to the owning shard over SPSC rings) → `agg` (minute/hour counters, uniques,
//! top-N) → `query` (answers, merged over shards) → `http` (every endpoint, the only layer
//! that knows hyper). Beside the path: `readers` and `consumers` (the log as readers outside
//! the shards see it), `export` (Kafka), `config`, `metrics`, and at the bottom `sys`,
//! `transport`, `datadir`. `tools` holds the clients and offline tools (`blast`, `gen`,
//! `tail`, `replay`, `check`, `import`), which the server never imports. See ARCHITECTURE.md
//! for the map of the folders and the path of one hit.

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
