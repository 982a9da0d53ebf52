//! Parsing what arrives: the syslog header nginx and relays put before each line.

pub mod event;
pub mod syslog;
