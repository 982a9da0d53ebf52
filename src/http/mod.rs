//! The HTTP layer: everything pixeld serves on its HTTP port, and the only part of pixeld that
//! knows hyper. `server` accepts connections (limits, hyper on glommio), `router` sends each
//! request through the access check (`auth`) to one file per group of endpoints:
//! - `ingest`: `GET`/`POST /p.gif`, `POST /v1/events`, with `visitor` (cookieless ids) and
//!   `idempotency` (`Idempotency-Key`: batches stored once);
//! - `tracker`: `GET /px.js` and `/px.<hash>.js`, the page-side script that sends the pixel;
//! - `query`: `GET /v1/top`, `/v1/timeseries`, `/v1/summary`, `/v1/realtime`;
//! - `log`: `/v1/log`, `/v1/log/shards`; `consumers`: named consumers `/v1/consumers/…`;
//! - `ops`: `GET /metrics`, `/healthz`, `/readyz`;
//! - `dashboard`: `GET /`, `/dashboard/*` (embedded assets) and `GET /v1/live` (its stream).
//!
//! Below this layer nothing answers a request: the endpoints call `ingest`, `query`,
//! `readers` and `metrics`, which know nothing of HTTP.

pub mod auth;
pub mod consumers;
pub mod dashboard;
mod faults;
pub mod idempotency;
pub mod ingest;
pub mod log;
pub mod ops;
pub mod query;
pub mod response;
pub mod router;
pub mod server;
pub mod tracker;
pub mod visitor;

use std::rc::Rc;
use std::sync::Arc;

use http_body_util::{Either, Full};
use hyper::body::Bytes;

use crate::ingest::Ingest;
use crate::metrics::ShardStats;

pub use server::run;

/// Settings of the HTTP port that are not about ingest (those are in `IngestConfig`, shared
/// with UDP and TCP): who may read, and how many live streams a shard serves.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The bearer token every HTTP request but the pixel, health and the dashboard's shell
    /// must carry (`auth_token`); None on loopback without one.
    pub auth_token: Option<auth::AuthToken>,
    /// Open `/v1/live` streams allowed per shard (`dashboard.live_max_clients`).
    pub live_max_clients: usize,
    /// Derive a cookieless visitor id for pixel hits without `vid`
    /// (`tracker.derive_visitor_ids`; the salts live in `<data_dir>/tracker/`).
    pub derive_visitor_ids: bool,
    /// The country database, for its `/metrics` (`[geo]`).
    pub geo: Option<Arc<crate::parse::geo::GeoDb>>,
    /// The bot networks, for their `/metrics` (`[geo] bot_networks`).
    pub bot_networks: Option<Arc<crate::parse::networks::NetworksFile>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            auth_token: None,
            live_max_clients: 1000,
            derive_visitor_ids: true,
            geo: None,
            bot_networks: None,
        }
    }
}

/// A response body: a whole body, or the endless stream of `/v1/live`.
pub type Body = Either<Full<Bytes>, dashboard::live::LiveBody>;

/// What every shard's HTTP server needs.
pub struct HttpContext {
    pub shard: usize,
    pub cfg: HttpConfig,
    pub ingest: Rc<Ingest>,
    /// Every shard's counters, for `/metrics` and `/readyz`.
    pub all_stats: Arc<Vec<Arc<ShardStats>>>,
    /// The query fan-out of this shard.
    pub hub: Rc<crate::query::Hub>,
    /// The log over HTTP and named consumers (shared by every shard).
    pub log_api: Arc<crate::readers::LogReaders>,
    /// The Kafka export's counters, when it is configured (`/metrics`, `/readyz`).
    pub export: Option<Arc<crate::export::ExportStats>>,
    /// Cookieless ids for pixel hits without `vid`; None when `tracker.derive_visitor_ids`
    /// is off.
    pub visitor_ids: Option<visitor::VisitorIds>,
    /// The `Idempotency-Key` store of `POST /v1/events`, shared by every shard.
    pub keys: Option<Arc<idempotency::KeyStore>>,
    /// The log scans running in the process (`GET /v1/scans`), shared by every shard.
    pub scans: Arc<crate::query::scan::Scans>,
}

/// Runs `f` on glommio's blocking pool: segment reads and the consumer store's fsyncs never
/// run on the executor thread that also ingests.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}
