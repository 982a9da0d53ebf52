//! Ingest into a real `pixeld serve`: UDP syslog, TCP (line and octet framing) and HTTP
//! (pixel and acknowledged batches), through Debian's nginx with the shipped snippet, under
//! garbage and a UDP flood, with a source allow-list; every line is logged or counted, and the
//! counters add up. Also the routing mesh between shards under backpressure. One test binary;
//! each module is one subject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod allowed_sources;
mod garbage;
mod http;
mod http_faults;
mod idempotency;
mod nginx;
mod pixel;
mod route_backpressure;
mod tcp_stop;
mod udp_overload;
mod udp_tcp;
