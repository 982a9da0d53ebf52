//! Configuration: a TOML file (or the embedded default) parsed into [`RawConfig`], then
//! validated into [`Config`], whose fields cannot be wrong.
//!
//! Two stages keep errors precise: serde reports syntax, types and unknown keys with their
//! location; validation reports values out of range with the field's dotted name and the
//! accepted range. `config/pixeld.toml` is both the documented defaults and the embedded
//! config, so the documentation cannot drift from the behaviour (a test checks it).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::format::{Codec, MAX_RECORD};
use crate::log::retention::Retention;
use crate::log::{Fsync, LogConfig};

/// The documented default configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../config/pixeld.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{field}` {reason}")]
    Invalid {
        origin: String,
        field: &'static str,
        reason: String,
    },
}

/// A size: a number of bytes or a string with a unit ("256KiB").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn parse(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| format!("is not a size ({s:?}: {e}); write e.g. 4096 or \"256KiB\"")),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("is not a duration ({s:?}: {e}); write e.g. \"10ms\", \"1h\", \"7d\""))
}

/// `[listen]`: listener addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// UDP syslog listener (nginx `access_log syslog:`).
    pub udp: String,
    /// TCP listener for relays (octet-counted or newline framing).
    pub tcp: String,
    /// HTTP listener (pixel, batch endpoint, queries, metrics).
    pub http: String,
    /// Hand the sockets pixeld binds itself to systemd's file descriptor store: "auto", "yes"
    /// or "no" (see [`FdStore`]).
    pub fd_store: String,
}

/// `listen.fd_store`: whether the shards put the sockets they bind themselves in systemd's
/// file descriptor store (`FDSTORE=1`), so that they outlive a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdStore {
    /// When systemd says the service has a store (`$FDSTORE`, systemd 254 and later).
    Auto,
    /// Whenever pixeld runs under a service manager (`NOTIFY_SOCKET`), e.g. on systemd 252
    /// with `FileDescriptorStoreMax=` set.
    Yes,
    /// Never.
    No,
}

/// `[ingest]`: receiving hits. See config/pixeld.toml for each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub max_line_bytes: Size,
    pub udp_rcvbuf: Size,
    pub receive_coalesce: String,
    pub tcp_framing: String,
    pub tcp_max_connections: u64,
    pub tcp_idle_timeout: String,
    pub http_max_body: Size,
    pub http_max_connections: u64,
    pub http_header_timeout: String,
    pub idempotency_horizon: String,
    pub pixel_overload: String,
    pub pixel_max_wait: String,
    pub trusted_proxies: Vec<String>,
    pub allowed_sources: Vec<String>,
}

/// `[log]`: the durable log of each shard. See config/pixeld.toml for each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub batch_max_bytes: Size,
    pub batch_max_delay: String,
    pub fsync: String,
    pub fsync_interval: String,
    pub segment_max_bytes: Size,
    pub segment_max_age: String,
    pub retention: String,
    pub retention_bytes: Size,
    pub retention_bytes_hard: Size,
    pub compression: String,
    pub compression_level: i32,
    pub index_interval_bytes: Size,
    pub max_pending_bytes: Size,
    pub max_record_bytes: Size,
}

/// `[agg]`: the aggregates. See config/pixeld.toml for each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgg {
    pub enabled: bool,
    pub minute_window: String,
    pub hour_window: String,
    pub day_window: String,
    pub future_allowance: String,
    pub heartbeat_seconds: u32,
    pub url_keep_query: Vec<String>,
    pub checkpoint_interval: String,
    pub visit_gap: String,
    pub visit_late_allowance: String,
    pub bounce_engaged_seconds: u32,
    pub url_visitors: bool,
    pub url_channels: bool,
    pub url_referrers: bool,
    /// `exclude` (bots count only in the `bot` dimension) or `include`.
    pub bots: String,
    /// `[agg.fields]`: the JSON field names of each event field, alternatives in order.
    pub fields: crate::parse::event::FieldNames,
    /// `[agg.dimensions]`: custom dimensions of a pageview, name → the line's field.
    #[serde(default)]
    pub dimensions: std::collections::BTreeMap<String, String>,
}

/// `[dashboard]`: the page served on `GET /` and its live stream. See config/pixeld.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    pub live_max_clients: u64,
}

/// `[tracker]`: the page-side script's server half. See config/pixeld.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracker {
    pub derive_visitor_ids: bool,
}

/// `[geo]`: the country database and the bot networks. See config/pixeld.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    pub database: PathBuf,
    pub bot_networks: PathBuf,
    pub reload_interval: String,
}

/// The API token as written in the file. Its `Debug` never shows it (configs get logged).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawSecret(pub String);

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// What `pixeld validate` prints instead of a configured token.
pub const REDACTED_TOKEN: &str = "<set, not shown>";

/// The config file as written. Every field may be omitted; omitted fields take the values
/// of the embedded default file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: PathBuf,
    /// "auto" or a number of shards.
    pub shards: ShardCount,
    /// How long a clean stop may take before the process gives up on a stuck shard.
    pub shutdown_timeout: String,
    /// Bearer token the HTTP API asks for ("" = none; required off loopback).
    pub auth_token: RawSecret,
    pub listen: RawListen,
    pub ingest: RawIngest,
    pub log: RawLog,
    pub agg: RawAgg,
    pub dashboard: RawDashboard,
    pub tracker: RawTracker,
    pub geo: RawGeo,
    /// `[export.kafka]`: absent = no export.
    #[serde(default)]
    pub export: crate::export::RawExport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardCount {
    Count(u64),
    Auto(String),
}

impl RawConfig {
    /// The embedded defaults.
    pub fn defaults() -> RawConfig {
        // The embedded file is checked by a unit test; parse it strictly.
        match toml::from_str::<RawConfig>(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(e) => panic!("embedded config/pixeld.toml is invalid: {e}"),
        }
    }

    /// Parses `text` (from `origin`, for messages) over the defaults: the file's tables are
    /// merged key by key into the embedded default file, then the result is deserialized
    /// strictly, so an unknown or mistyped key is an error naming it.
    pub fn parse(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
        let err = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        let user: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_CONFIG).map_err(|e| err(e.to_string()))?;
        merge_tables(&mut merged, user);
        RawConfig::deserialize(toml::Value::Table(merged)).map_err(|e| err(e.to_string()))
    }

    /// Reads a file, or the embedded defaults when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<(RawConfig, String), ConfigError> {
        match path {
            None => Ok((RawConfig::defaults(), "embedded defaults".into())),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_path_buf(),
                    source: e,
                })?;
                let origin = p.display().to_string();
                Ok((RawConfig::parse(&text, &origin)?, origin))
            }
        }
    }

    /// The effective config as TOML (for `pixeld validate`). A configured `auth_token` is
    /// replaced by [`REDACTED_TOKEN`]: the token never reaches a terminal or a log.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth_token.0.is_empty() {
            shown.auth_token = RawSecret(REDACTED_TOKEN.into());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Overlays `over` onto `base`, recursing into tables so that a file setting one key of a
/// section keeps the defaults of the others. Unknown keys are kept, for serde to reject.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub shards: usize,
    pub shutdown_timeout: Duration,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    /// `listen.fd_store`.
    pub fd_store: FdStore,
    pub ingest: crate::ingest::IngestConfig,
    /// The HTTP port's access and dashboard settings.
    pub http_server: crate::http::HttpConfig,
    pub log: LogTemplate,
    pub agg: crate::agg::AggConfig,
    /// The Kafka export, when `[export.kafka]` is present.
    pub export: Option<crate::export::KafkaExportConfig>,
    /// How often the country database's file is looked at for a new version (`[geo]`; the
    /// database itself is `agg.event.geo`).
    pub geo_reload_interval: Duration,
}

/// Log settings shared by every shard; [`LogTemplate::for_shard`] makes a shard's [`LogConfig`].
#[derive(Debug, Clone)]
pub struct LogTemplate(LogConfig);

impl LogTemplate {
    pub fn for_shard(&self, data_dir: &Path, shard: usize) -> LogConfig {
        let mut c = self.0.clone();
        // glommio resolves relative paths against no directory at all: make them absolute.
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        c.dir = data_dir.join(crate::log::format::shard_dir_name(shard));
        c.shard = shard;
        c
    }
    pub fn get(&self) -> &LogConfig {
        &self.0
    }
    pub fn get_mut(&mut self) -> &mut LogConfig {
        &mut self.0
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data_dir={} shards={} udp={} tcp={} http={}",
            self.data_dir.display(),
            self.shards,
            self.udp,
            self.tcp,
            self.http
        )?;
        if !self.agg.enabled {
            write!(f, " aggregation=off")?;
        }
        if let Some(k) = &self.export {
            write!(f, " export=kafka:{}@{}", k.topic, k.brokers)?;
        }
        if let Some(db) = self.agg.event.geo.db() {
            write!(f, " geo={}", db.path().display())?;
        }
        if let Some(n) = self.agg.event.bot_networks.db() {
            write!(f, " bot_networks={}", n.path().display())?;
        }
        Ok(())
    }
}

impl Config {
    /// Validates `raw`; `origin` names the file in messages. Each section validates itself
    /// (below, and `export::KafkaExportConfig::from_raw`); this only puts them together and
    /// checks what spans sections.
    pub fn from_raw(raw: &RawConfig, origin: &str) -> Result<Config, ConfigError> {
        let c = Check { origin };
        let shards = shard_count(&raw.shards, &c)?;
        let log = log_section(&raw.log, &c)?;
        let ingest = ingest_section(&raw.ingest, log.max_record_bytes, &c)?;
        let mut agg = agg_section(&raw.agg, &c)?;
        if !raw.geo.database.as_os_str().is_empty() {
            // A file that cannot be read yet is not a configuration error: the status says
            // why, the server logs it and looks again every reload_interval.
            agg.event.geo =
                crate::parse::geo::Geo::new(crate::parse::geo::GeoDb::open(&raw.geo.database));
        }
        if !raw.geo.bot_networks.as_os_str().is_empty() {
            // The same: a bad list is reported, and looked at again.
            agg.event.bot_networks = crate::parse::networks::BotNetworks::new(
                crate::parse::networks::NetworksFile::open(&raw.geo.bot_networks),
            );
        }
        let geo_reload_interval = c.duration_within(
            "geo.reload_interval",
            &raw.geo.reload_interval,
            Duration::from_millis(100),
            (Duration::from_secs(7 * 86400), "7d", ""),
        )?;
        let http = c.addr("listen.http", &raw.listen.http)?;
        let http_server = crate::http::HttpConfig {
            auth_token: auth_token(&raw.auth_token, http)
                .map_err(|r| c.invalid("auth_token", r))?,
            live_max_clients: c.count(
                "dashboard.live_max_clients",
                raw.dashboard.live_max_clients,
                100_000,
            )? as usize,
            derive_visitor_ids: raw.tracker.derive_visitor_ids,
            geo: agg.event.geo.db().cloned(),
            bot_networks: agg.event.bot_networks.db().cloned(),
        };
        Ok(Config {
            shutdown_timeout: c.duration(
                "shutdown_timeout",
                &raw.shutdown_timeout,
                Duration::from_secs(1),
            )?,
            agg,
            geo_reload_interval,
            ingest,
            http_server,
            data_dir: raw.data_dir.clone(),
            shards,
            udp: c.addr("listen.udp", &raw.listen.udp)?,
            tcp: c.addr("listen.tcp", &raw.listen.tcp)?,
            http,
            fd_store: match raw.listen.fd_store.trim() {
                "auto" => FdStore::Auto,
                "yes" => FdStore::Yes,
                "no" => FdStore::No,
                other => {
                    return Err(c.invalid(
                        "listen.fd_store",
                        format!("is {other:?}; write \"auto\", \"yes\" or \"no\""),
                    ))
                }
            },
            log: LogTemplate(log),
            export: match &raw.export.kafka {
                None => None,
                Some(k) => Some(
                    crate::export::KafkaExportConfig::from_raw(k)
                        .map_err(|e| c.invalid(e.field, e.reason))?,
                ),
            },
        })
    }
}

/// The checks every section's values go through, each naming the file and the key when it
/// refuses one.
struct Check<'a> {
    origin: &'a str,
}

impl Check<'_> {
    fn invalid(&self, field: &'static str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            field,
            reason,
        }
    }

    /// A size in `min..=max` bytes.
    fn size(&self, field: &'static str, s: &Size, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = s.parse().map_err(|r| self.invalid(field, r))?;
        if v < min || v > max {
            return Err(self.invalid(
                field,
                format!(
                    "is {}, must be between {} and {}",
                    bytesize::ByteSize(v),
                    bytesize::ByteSize(min),
                    bytesize::ByteSize(max)
                ),
            ));
        }
        Ok(v)
    }

    /// A duration of at least `min`.
    fn duration(
        &self,
        field: &'static str,
        s: &str,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = parse_duration(s).map_err(|r| self.invalid(field, r))?;
        if d < min {
            return Err(self.invalid(field, format!("is {s}, must be at least {min:?}")));
        }
        Ok(d)
    }

    /// A duration in `min..=max`; `max_text` is how the refusal writes the bound, and
    /// `hint` what it adds after it.
    fn duration_within(
        &self,
        field: &'static str,
        s: &str,
        min: Duration,
        (max, max_text, hint): (Duration, &str, &str),
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(field, s, min)?;
        if d > max {
            return Err(self.invalid(field, format!("is {s:?}; must be at most {max_text}{hint}")));
        }
        Ok(d)
    }

    /// A whole number in `1..=max`.
    fn count(&self, field: &'static str, n: u64, max: u64) -> Result<u64, ConfigError> {
        if (1..=max).contains(&n) {
            Ok(n)
        } else {
            Err(self.invalid(field, format!("is {n}, must be between 1 and {max}")))
        }
    }

    /// An `IP:port` address.
    fn addr(&self, field: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|e| {
            self.invalid(
                field,
                format!("is not an IP:port address ({s:?}: {e}); write e.g. \"127.0.0.1:5514\""),
            )
        })
    }
}

/// `shards`: a count, or `"auto"` for one per CPU this process may run on.
fn shard_count(shards: &ShardCount, c: &Check) -> Result<usize, ConfigError> {
    Ok(match shards {
        ShardCount::Count(n) if (1..=1024).contains(n) => *n as usize,
        ShardCount::Count(n) => {
            return Err(c.invalid(
                "shards",
                format!("is {n}, must be between 1 and 1024 or \"auto\""),
            ))
        }
        ShardCount::Auto(s) if s == "auto" => crate::sys::allowed_cpus().len().max(1),
        ShardCount::Auto(s) => {
            return Err(c.invalid("shards", format!("is {s:?}, must be a number or \"auto\"")))
        }
    })
}

/// `[log]`: the template every shard's `LogConfig` is made from.
fn log_section(l: &RawLog, c: &Check) -> Result<LogConfig, ConfigError> {
    let fsync = match l.fsync.as_str() {
        "interval" => Fsync::Interval(c.duration(
            "log.fsync_interval",
            &l.fsync_interval,
            Duration::from_millis(1),
        )?),
        "batch" => Fsync::EveryBatch,
        "never" => Fsync::Never,
        other => {
            return Err(c.invalid(
                "log.fsync",
                format!("is {other:?}, must be \"interval\", \"batch\" or \"never\""),
            ))
        }
    };
    let codec = match l.compression.as_str() {
        "zstd" => Codec::Zstd,
        "none" => Codec::None,
        other => {
            return Err(c.invalid(
                "log.compression",
                format!("is {other:?}, must be \"zstd\" or \"none\""),
            ))
        }
    };
    if !(-7..=19).contains(&l.compression_level) {
        return Err(c.invalid(
            "log.compression_level",
            format!("is {}, must be between -7 and 19", l.compression_level),
        ));
    }
    let batch_max_bytes = c.size("log.batch_max_bytes", &l.batch_max_bytes, 1 << 10, 16 << 20)?;
    let max_record_bytes = c.size(
        "log.max_record_bytes",
        &l.max_record_bytes,
        1 << 10,
        MAX_RECORD as u64,
    )?;
    let retention_age = match l.retention.trim() {
        "forever" => None,
        s => Some(c.duration("log.retention", s, Duration::from_secs(60))?),
    };
    let retention_bytes = match &l.retention_bytes {
        Size::Text(s) if s.trim() == "unlimited" => None,
        s => Some(c.size("log.retention_bytes", s, 1 << 20, u64::MAX)?),
    };
    let retention_bytes_hard = match &l.retention_bytes_hard {
        Size::Text(s) if s.trim() == "auto" => retention_bytes.map(|b| b.saturating_mul(2)),
        Size::Text(s) if s.trim() == "unlimited" => None,
        s => {
            let hard = c.size("log.retention_bytes_hard", s, 1 << 20, u64::MAX)?;
            if retention_bytes.is_some_and(|b| hard < b) {
                return Err(c.invalid(
                    "log.retention_bytes_hard",
                    format!(
                        "is {}, smaller than log.retention_bytes; it must be at least that (or \"auto\", \"unlimited\")",
                        bytesize::ByteSize(hard)
                    ),
                ));
            }
            Some(hard)
        }
    };
    Ok(LogConfig {
        dir: PathBuf::new(),
        shard: 0,
        codec,
        zstd_level: l.compression_level,
        batch_max_bytes: batch_max_bytes as usize,
        batch_max_delay: c.duration(
            "log.batch_max_delay",
            &l.batch_max_delay,
            Duration::from_micros(100),
        )?,
        fsync,
        segment_max_bytes: c.size(
            "log.segment_max_bytes",
            &l.segment_max_bytes,
            64 << 10,
            1 << 40,
        )?,
        segment_max_age: c.duration(
            "log.segment_max_age",
            &l.segment_max_age,
            Duration::from_secs(1),
        )?,
        index_interval_bytes: c.size(
            "log.index_interval_bytes",
            &l.index_interval_bytes,
            512,
            64 << 20,
        )?,
        max_pending_bytes: c.size(
            "log.max_pending_bytes",
            &l.max_pending_bytes,
            1 << 20,
            1 << 40,
        )? as usize,
        max_record_bytes: max_record_bytes as usize,
        retention: Retention {
            max_age: retention_age,
            max_bytes: retention_bytes,
        },
        retention_pin: crate::log::retention::RetentionPin::default(),
        retention_bytes_hard,
    })
}

/// `[ingest]`: receive limits, framing, who may send and whose `X-Forwarded-For` is believed.
fn ingest_section(
    i: &RawIngest,
    max_record_bytes: usize,
    c: &Check,
) -> Result<crate::ingest::IngestConfig, ConfigError> {
    let max_line_bytes = c.size("ingest.max_line_bytes", &i.max_line_bytes, 256, 16 << 20)?;
    if max_line_bytes > max_record_bytes as u64 {
        return Err(c.invalid(
            "ingest.max_line_bytes",
            format!("is larger than log.max_record_bytes ({})", max_record_bytes),
        ));
    }
    Ok(crate::ingest::IngestConfig {
        max_line_bytes: max_line_bytes as usize,
        udp_rcvbuf: c.size("ingest.udp_rcvbuf", &i.udp_rcvbuf, 4 << 10, 1 << 30)? as usize,
        receive_coalesce: c.duration_within(
            "ingest.receive_coalesce",
            &i.receive_coalesce,
            Duration::ZERO,
            (
                Duration::from_millis(50),
                "50ms",
                " (it delays every hit by up to that long); \"0s\" turns it off",
            ),
        )?,
        tcp_framing: match i.tcp_framing.as_str() {
            "auto" => crate::ingest::Framing::Auto,
            "octet" => crate::ingest::Framing::Octet,
            "line" => crate::ingest::Framing::Line,
            other => {
                return Err(c.invalid(
                    "ingest.tcp_framing",
                    format!("is {other:?}, must be \"auto\", \"octet\" or \"line\""),
                ))
            }
        },
        tcp_max_connections: c.count(
            "ingest.tcp_max_connections",
            i.tcp_max_connections,
            1_000_000,
        )? as usize,
        tcp_idle_timeout: c.duration(
            "ingest.tcp_idle_timeout",
            &i.tcp_idle_timeout,
            Duration::from_secs(1),
        )?,
        http_max_body: c.size("ingest.http_max_body", &i.http_max_body, 1 << 10, 256 << 20)?
            as usize,
        http_max_connections: c.count(
            "ingest.http_max_connections",
            i.http_max_connections,
            1_000_000,
        )? as usize,
        http_header_timeout: c.duration(
            "ingest.http_header_timeout",
            &i.http_header_timeout,
            Duration::from_secs(1),
        )?,
        idempotency_horizon: c.duration(
            "ingest.idempotency_horizon",
            &i.idempotency_horizon,
            Duration::from_secs(1),
        )?,
        pixel_overload: match i.pixel_overload.as_str() {
            "drop" => crate::ingest::PixelOverload::Drop,
            "wait" => crate::ingest::PixelOverload::Wait(c.duration(
                "ingest.pixel_max_wait",
                &i.pixel_max_wait,
                Duration::from_millis(1),
            )?),
            other => {
                return Err(c.invalid(
                    "ingest.pixel_overload",
                    format!("is {other:?}; write \"drop\" (answer at once, count the hit as dropped) or \"wait\" (hold the answer up to pixel_max_wait for room in the log)"),
                ))
            }
        },
        trusted_proxies: i
            .trusted_proxies
            .iter()
            .map(|a| {
                a.parse().map_err(|e| {
                    c.invalid(
                        "ingest.trusted_proxies",
                        format!("has {a:?}, not an IP address ({e})"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        allowed_sources: i
            .allowed_sources
            .iter()
            .map(|a| {
                // A bare address is its own /32 or /128.
                a.parse::<ipnet::IpNet>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        c.invalid(
                            "ingest.allowed_sources",
                            format!(
                                "has {a:?}, not an address or CIDR block such as \"10.0.0.0/8\""
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// The most custom dimensions (`[agg.dimensions]`).
pub const MAX_CUSTOM_DIMENSIONS: usize = 8;

/// `[agg.dimensions]`: checked names and fields, in the order of their names.
fn custom_dimensions(
    dims: &std::collections::BTreeMap<String, String>,
    fields: &crate::parse::event::FieldNames,
    c: &Check,
) -> Result<Vec<(String, String)>, ConfigError> {
    use crate::parse::event::dims::DIMS;
    if dims.len() > MAX_CUSTOM_DIMENSIONS {
        return Err(c.invalid(
            "agg.dimensions",
            format!(
                "has {}; at most {MAX_CUSTOM_DIMENSIONS} custom dimensions",
                dims.len()
            ),
        ));
    }
    let reserved = [
        "url",
        "ref_domain",
        "site",
        "entry_page",
        "exit_page",
        "time",
    ];
    let builtin_fields: Vec<&String> = [
        &fields.msec,
        &fields.time,
        &fields.url,
        &fields.referrer,
        &fields.vid,
        &fields.action,
        &fields.inc,
        &fields.ua,
        &fields.ip,
        &fields.name,
        &fields.props,
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut out = Vec::with_capacity(dims.len());
    for (name, field) in dims {
        let well_formed = name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(c.invalid(
                "agg.dimensions",
                format!("`{name}`: a name is 1 to 32 of a-z, 0-9 and _, starting with a letter"),
            ));
        }
        if DIMS.contains(&name.as_str()) || reserved.contains(&name.as_str()) {
            return Err(c.invalid(
                "agg.dimensions",
                format!("`{name}` is a built-in dimension; choose another name"),
            ));
        }
        if field.is_empty() || field.len() > 64 {
            return Err(c.invalid(
                "agg.dimensions",
                format!("`{name}`: its field must be 1 to 64 bytes (the JSON key of the line)"),
            ));
        }
        if builtin_fields.contains(&field) {
            return Err(c.invalid(
                "agg.dimensions",
                format!("`{name}`: `{field}` is already read as an event field ([agg.fields])"),
            ));
        }
        if field.strip_prefix(crate::parse::event::PROPS_PREFIX) == Some("") {
            return Err(c.invalid(
                "agg.dimensions",
                format!("`{name}`: `props.` names no prop; write `props.KEY` (a key of a custom event's props)"),
            ));
        }
        out.push((name.clone(), field.clone()));
    }
    Ok(out)
}

/// `[agg]`: the windows, the future allowance and what an event is made of.
fn agg_section(a: &RawAgg, c: &Check) -> Result<crate::agg::AggConfig, ConfigError> {
    let whole = |field: &'static str, s: &str, unit: u64, min: u64, max: u64| {
        let d = c.duration(field, s, Duration::from_secs(unit))?.as_secs();
        if d % unit != 0 || d / unit < min || d / unit > max {
            return Err(c.invalid(
                field,
                format!(
                    "is {s:?}; must be whole {} between {min} and {max}",
                    if unit == 60 { "minutes" } else { "hours" }
                ),
            ));
        }
        Ok((d / unit) as i64)
    };
    let f = &a.fields;
    for (field, names) in [
        ("agg.fields.msec", &f.msec),
        ("agg.fields.url", &f.url),
        ("agg.fields.action", &f.action),
    ] {
        if names.is_empty() {
            return Err(c.invalid(field, "needs at least one field name".into()));
        }
    }
    let agg = crate::agg::AggConfig {
        enabled: a.enabled,
        minute_window: whole("agg.minute_window", &a.minute_window, 60, 60, 31 * 24 * 60)?,
        hour_window: whole("agg.hour_window", &a.hour_window, 3600, 1, 3 * 366 * 24)?,
        day_window: whole("agg.day_window", &a.day_window, 86400, 1, 100 * 366)?,
        future_minutes: whole("agg.future_allowance", &a.future_allowance, 60, 1, 24 * 60)?,
        event: crate::parse::event::EventConfig {
            fields: f.clone(),
            heartbeat_seconds: c.count(
                "agg.heartbeat_seconds",
                u64::from(a.heartbeat_seconds),
                3600,
            )? as u32,
            url_keep_query: a.url_keep_query.clone(),
            geo: crate::parse::geo::Geo::none(),
            bot_networks: crate::parse::networks::BotNetworks::none(),
            custom: custom_dimensions(&a.dimensions, f, c)?,
        },
        checkpoint_interval: c.duration(
            "agg.checkpoint_interval",
            &a.checkpoint_interval,
            Duration::from_millis(1),
        )?,
        visits: crate::agg::visits::VisitSettings {
            gap_ms: c
                .duration("agg.visit_gap", &a.visit_gap, Duration::from_secs(1))?
                .as_millis() as i64,
            late_allowance_ms: c
                .duration(
                    "agg.visit_late_allowance",
                    &a.visit_late_allowance,
                    Duration::from_secs(1),
                )?
                .as_millis() as i64,
            bounce_engaged_seconds: a.bounce_engaged_seconds,
        },
        url_visitors: a.url_visitors,
        url_channels: a.url_channels,
        url_referrers: a.url_referrers,
        bots: match a.bots.as_str() {
            "exclude" => false,
            "include" => true,
            other => {
                return Err(c.invalid(
                    "agg.bots",
                    format!("`{other}`: \"exclude\" (the default: bots count only in the bot dimension) or \"include\" (in every metric)"),
                ))
            }
        },
    };
    for (field, text, ms, max) in [
        ("agg.visit_gap", &a.visit_gap, agg.visits.gap_ms, "24h"),
        (
            "agg.visit_late_allowance",
            &a.visit_late_allowance,
            agg.visits.late_allowance_ms,
            "7d",
        ),
    ] {
        let max_ms = parse_duration(max).map_or(0, |d| d.as_millis() as i64);
        if ms > max_ms {
            return Err(c.invalid(field, format!("is {text:?}; must be at most {max}")));
        }
    }
    if a.bounce_engaged_seconds > 3600 {
        return Err(c.invalid(
            "agg.bounce_engaged_seconds",
            format!("is {}, must be at most 3600", a.bounce_engaged_seconds),
        ));
    }
    if agg.checkpoint_interval < Duration::from_millis(100)
        || agg.checkpoint_interval > Duration::from_secs(24 * 3600)
    {
        return Err(c.invalid(
            "agg.checkpoint_interval",
            format!(
                "is {:?}; must be between 100ms and 24h",
                a.checkpoint_interval
            ),
        ));
    }
    if agg.minute_window > agg.hour_window * 60 {
        return Err(c.invalid(
            "agg.minute_window",
            format!(
                "is longer than agg.hour_window ({:?}); the hour buckets must cover the minute buckets",
                a.hour_window
            ),
        ));
    }
    if agg.day_window * 24 < agg.hour_window {
        return Err(c.invalid(
            "agg.day_window",
            format!(
                "is shorter than agg.hour_window ({:?}); the day buckets must cover the hour buckets",
                a.hour_window
            ),
        ));
    }
    Ok(agg)
}

/// Validates the API token against the HTTP address: a non-loopback address without a
/// token would publish every query, metric and the log to the network, so it is refused.
fn auth_token(
    raw: &RawSecret,
    http: SocketAddr,
) -> Result<Option<crate::http::auth::AuthToken>, String> {
    let t = raw.0.as_str();
    if t.is_empty() {
        if !http.ip().is_loopback() {
            return Err(format!(
                "is not set, but listen.http = {http} is not a loopback address: anyone who can reach it could read the analytics and the log. Set auth_token (at least {} characters, e.g. `openssl rand -hex 32`) or bind listen.http to 127.0.0.1",
                crate::http::auth::AuthToken::MIN_LEN
            ));
        }
        return Ok(None);
    }
    // Never echo the value: only its length and what is wrong with it.
    crate::http::auth::AuthToken::new(t)
        .map(Some)
        .map_err(|why| format!("is not usable ({} characters): {why}", t.chars().count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid_and_documented() {
        let raw = RawConfig::defaults();
        let c = Config::from_raw(&raw, "embedded").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.shards >= 1);
        let l = c.log.get();
        assert_eq!(l.batch_max_bytes, 1 << 20);
        assert_eq!(l.batch_max_delay, Duration::from_millis(10));
        assert_eq!(l.fsync, Fsync::Interval(Duration::from_millis(50)));
        assert_eq!(l.segment_max_bytes, 256 << 20);
        assert_eq!(l.retention.max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(l.retention.max_bytes, None);
        // The effective config printed by `validate` parses back to the same thing.
        let again = RawConfig::parse(&raw.to_toml(), "printed").unwrap();
        assert_eq!(again, raw);
        // An empty file means the defaults.
        assert_eq!(RawConfig::parse("", "empty").unwrap(), raw);
    }

    #[test]
    fn auth_token_required_off_loopback_and_never_shown() {
        let token = "0123456789abcdef-token";
        let raw = RawConfig::parse("[listen]\nhttp = \"0.0.0.0:5580\"\n", "f").unwrap();
        let e = Config::from_raw(&raw, "f").unwrap_err().to_string();
        assert!(
            e.contains("auth_token") && e.contains("0.0.0.0:5580"),
            "{e}"
        );
        let raw = RawConfig::parse(
            &format!("auth_token = \"{token}\"\n[listen]\nhttp = \"0.0.0.0:5580\"\n"),
            "f",
        )
        .unwrap();
        let c = Config::from_raw(&raw, "f").unwrap();
        assert!(c.http_server.auth_token.is_some());
        for shown in [
            raw.to_toml(),
            format!("{raw:?}"),
            format!("{c:?}"),
            c.to_string(),
        ] {
            assert!(!shown.contains(token), "{shown}");
        }
        assert!(raw.to_toml().contains(REDACTED_TOKEN));
        let raw = RawConfig::parse("auth_token = \"tooshort\"\n", "f").unwrap();
        let e = Config::from_raw(&raw, "f").unwrap_err().to_string();
        assert!(e.contains("auth_token") && !e.contains("tooshort"), "{e}");
        // Loopback needs none.
        let c = Config::from_raw(&RawConfig::defaults(), "f").unwrap();
        assert!(c.http_server.auth_token.is_none());
        assert_eq!(c.http_server.live_max_clients, 1000);
    }

    #[test]
    fn custom_dimensions_are_checked() {
        let cfg = |text: &str| {
            let raw = RawConfig::parse(text, "f.toml").unwrap();
            Config::from_raw(&raw, "f.toml").map_err(|e| e.to_string())
        };
        let c = cfg("[agg.dimensions]\nsection = \"section\"\nauthor = \"by\"\n").unwrap();
        assert_eq!(
            c.agg.event.custom,
            [
                ("author".to_string(), "by".to_string()),
                ("section".into(), "section".into())
            ]
        );
        assert_eq!(
            c.agg.dim_index("section"),
            Some(crate::parse::event::dims::DIMS.len() + 1)
        );
        assert_eq!(
            c.agg.dim_name(crate::parse::event::dims::DIMS.len()),
            "author"
        );
        for (text, says) in [
            ("[agg.dimensions]\nChannel = \"c\"\n", "a-z, 0-9"),
            ("[agg.dimensions]\ndevice = \"d\"\n", "built-in"),
            ("[agg.dimensions]\nurl = \"u\"\n", "built-in"),
            ("[agg.dimensions]\nx = \"url\"\n", "already read"),
            ("[agg.dimensions]\nx = \"\"\n", "1 to 64"),
            (
                "[agg.dimensions]\na=\"a\"\nb=\"b\"\nc=\"c\"\nd=\"d\"\ne=\"e\"\nf=\"f\"\ng=\"g\"\nh=\"h\"\ni=\"i\"\n",
                "at most 8",
            ),
        ] {
            let e = cfg(text).unwrap_err();
            assert!(e.contains("agg.dimensions") && e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = RawConfig::parse("[log]\nbatch_max_byte = 5\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("batch_max_byte"), "{e}");
        let raw = RawConfig::parse("[log]\nfsync = \"sometimes\"\n", "f.toml").unwrap();
        let e = Config::from_raw(&raw, "f.toml").unwrap_err().to_string();
        assert!(e.contains("log.fsync") && e.contains("sometimes"), "{e}");
        let raw = RawConfig::parse("[log]\nbatch_max_bytes = \"1GiB\"\n", "f.toml").unwrap();
        let e = Config::from_raw(&raw, "f.toml").unwrap_err().to_string();
        assert!(e.contains("log.batch_max_bytes"), "{e}");
        let raw = RawConfig::parse("shards = 3\n[listen]\nudp = \"nope\"\n", "f.toml").unwrap();
        let e = Config::from_raw(&raw, "f.toml").unwrap_err().to_string();
        assert!(e.contains("listen.udp"), "{e}");
        let raw = RawConfig::parse(
            "[log]\nfsync = \"batch\"\nretention = \"forever\"\nretention_bytes = \"10GiB\"\n",
            "f",
        )
        .unwrap();
        let c = Config::from_raw(&raw, "f").unwrap();
        assert_eq!(c.log.get().fsync, Fsync::EveryBatch);
        assert_eq!(c.log.get().retention.max_age, None);
        assert_eq!(c.log.get().retention.max_bytes, Some(10 << 30));
        // The receive coalescing window: zero turns it off, above 50 ms is refused.
        let c = Config::from_raw(&RawConfig::parse("", "f").unwrap(), "f").unwrap();
        assert_eq!(c.ingest.receive_coalesce, Duration::from_millis(2));
        let raw = RawConfig::parse("[ingest]\nreceive_coalesce = \"0s\"\n", "f").unwrap();
        let c = Config::from_raw(&raw, "f").unwrap();
        assert_eq!(c.ingest.receive_coalesce, Duration::ZERO);
        let raw = RawConfig::parse("[ingest]\nreceive_coalesce = \"60ms\"\n", "f").unwrap();
        let e = Config::from_raw(&raw, "f").unwrap_err().to_string();
        assert!(
            e.contains("ingest.receive_coalesce") && e.contains("at most 50ms"),
            "{e}"
        );
        // The pixel's overload choice.
        let raw = RawConfig::parse("[ingest]\npixel_overload = \"queue\"\n", "f").unwrap();
        let e = Config::from_raw(&raw, "f").unwrap_err().to_string();
        assert!(
            e.contains("ingest.pixel_overload") && e.contains("\"wait\""),
            "{e}"
        );
        let raw = RawConfig::parse(
            "[ingest]\npixel_overload = \"wait\"\npixel_max_wait = \"50ms\"\n",
            "f",
        )
        .unwrap();
        let c = Config::from_raw(&raw, "f").unwrap();
        assert_eq!(
            c.ingest.pixel_overload,
            crate::ingest::PixelOverload::Wait(Duration::from_millis(50))
        );
        assert_eq!(c.ingest.pixel_overload.describe(), "wait 50ms");
        let c = Config::from_raw(&RawConfig::defaults(), "embedded").unwrap();
        assert_eq!(c.ingest.pixel_overload, crate::ingest::PixelOverload::Drop);
    }
}
