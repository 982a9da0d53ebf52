//! Parsing what arrives: the syslog header nginx and relays put before each line
//! (`syslog`), then the analytics event in the message behind it (`event`), whose country comes
//! from the client address and a MaxMind-format database (`geo`).

pub mod event;
pub mod geo;
pub mod networks;
pub mod syslog;
pub mod watched;
