//! `pixeld serve` as a process and as a service: start, readiness and clean stop on signals,
//! the systemd notify protocol and watchdog, startup errors that name their fix, SIGTERM under
//! load, a kill -9 crash loop, the HTTP port's auth token and limits, the shipped systemd unit
//! and the Debian package. One test binary; each module is one subject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod crash_kill9;
mod fd_store;
mod graceful_shutdown;
mod http_auth;
mod http_limits;
mod notify;
mod package_deb;
mod socket_activation;
mod startup_errors;
mod systemd_real;
mod systemd_unit;
