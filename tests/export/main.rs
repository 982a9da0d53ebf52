//! The exports of a real `pixeld serve` to other systems: the Kafka export against a real
//! Kafka-protocol broker (`tansu`). A test binary of its own, so that `cargo test --test
//! export` runs just it; each module is one subject. Built only with the `kafka` feature
//! (on by default).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "kafka")]

#[path = "../common/mod.rs"]
mod common;

mod kafka;
