//! Answers of a real `pixeld serve`: the query API against an independent model of the event
//! spec, the live stream (`/v1/live`) and the dashboard's assets, and the dashboard itself in
//! a headless Chromium, and the tracking script in one. One test binary; each module is one
//! subject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod aggregates;
mod dashboard_browser;
mod dashboard_live;
mod dimensions;
mod events;
mod pageviews;
mod query_api;
mod store;
mod tracker_browser;
mod visits;
