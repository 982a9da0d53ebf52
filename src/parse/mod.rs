//! Parsing what arrives: the syslog header nginx and relays put before each line
//! (`syslog`), then the analytics event in the message behind it (`event`).

pub mod event;
pub mod syslog;
