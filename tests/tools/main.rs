//! The command-line tools and the log's consumers against a real `pixeld serve`: `pixeld
//! blast` (the load generator's accounting), `pixeld tail` (resuming from committed offsets)
//! and named consumers with committed offsets, lag and retention pins. One test binary; each
//! module is one subject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod blast;
mod consumers;
mod help;
mod tail;
