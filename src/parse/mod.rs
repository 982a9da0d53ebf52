//! Parsing what arrives: the syslog header nginx and relays put before each line
//! (`syslog`), then the analytics event in the message behind it (`event`), whose country comes
//! from the client address and a MaxMind-format database (`geo`), and which listed bot
//! network that address may be in (`networks`); both files are user-supplied and watched for
//! new versions (`watched`).

pub mod event;
pub mod geo;
pub mod networks;
pub mod syslog;
pub mod watched;
