//! pixeld: a single-box ingest appliance for web-analytics pixel hits.
//!
//! The library holds everything; `main.rs` is only the CLI. Modules follow the data path:
//! `shard` (one glommio executor per core) → `log` (the durable, segmented log each shard
//! appends to) → `replay`/`check` (reading it back). Ingest, routing, aggregates and queries
//! arrive in later issues; see ARCHITECTURE.md for the whole path.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agg;
pub mod check;
pub mod config;
pub mod gen;
pub mod import;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod parse;
pub mod query;
pub mod replay;
pub mod route;
pub mod serve;
pub mod shard;
