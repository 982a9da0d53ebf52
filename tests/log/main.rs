//! The durable log: records round-trip across segment rolls, recovery keeps exactly the
//! complete batches of a torn or randomly damaged log (and `check` pinpoints the damage),
//! nothing reported durable is lost to kill -9, a full disk or a failed fdatasync, foreign
//! files and retention are handled, the checked-in sample segment still decodes, and the log
//! reads back over HTTP. One test binary; each module is one subject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod bad_files;
mod crash_kill9;
mod damage_random;
mod disk_full;
mod fsync_failure;
mod http_read;
mod recover_torn_tail;
mod retention_check;
mod round_trip;
mod sample_format;
