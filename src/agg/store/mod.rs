//! The durable aggregate store: each owner shard's aggregates as a chain of checkpoints on
//! disk, tied to the log offsets they are the function of, so that a start loads them and
//! replays only the log after them — and so that hours older than the log's retention
//! survive a restart.
//!
//! `<data_dir>/agg/shard-NNN/` holds one owner's chain: files named by their sequence number
//! (`00000000000000000007.ckpt`), a *base* (the whole state) followed by *deltas* (the buckets
//! that changed since the link before, and the names interned since), each carrying the
//! applied-offset vector: for every source shard, the next offset of its log whose increments
//! are not in the state. The bytes are [`format`](mod@format)'s. [`Writer`] appends links on the shard's
//! own executor through glommio's DMA files (temp → fdatasync → rename → directory fsync, the
//! log's `write_file_durably`) and folds the chain into a new base when the deltas outweigh
//! it; the previous chain is kept until the new base is durable, as a fallback. [`load`] picks
//! the newest chain whose links all check out (CRC, parent, shard count, fingerprint), stops
//! at the first damaged link (reported, counted) and falls back to an older base, or to
//! nothing (the log then rebuilds what it still holds).
//!
//! The protocol that makes the offsets exact (stamped batches, checkpoints written only once
//! the offsets they name are durable in the sources' logs, replay from them at start) is in
//! `route`; this module owns the files.

pub mod format;
pub mod repartition;

use std::path::{Path, PathBuf};

use super::seal::SealJob;
use super::sealed::{self, SealedHeader};
use super::{AggConfig, Aggregates, Res};
use format::{FormatError, Header, Kind};

/// Why the store could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing checkpoint {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: crate::log::Error,
    },
}

/// The directory of owner `owner`'s checkpoints.
pub fn owner_dir(data_dir: &Path, owner: usize) -> PathBuf {
    data_dir
        .join("agg")
        .join(crate::log::format::shard_dir_name(owner))
}

/// The directory of an owner's sealed hours and days, under its checkpoint directory.
const SEALED: &str = "sealed";

/// The directory of owner `owner`'s sealed hours and days.
pub fn sealed_dir(data_dir: &Path, owner: usize) -> PathBuf {
    owner_dir(data_dir, owner).join(SEALED)
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.ckpt")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".ckpt")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoint files of one owner, by sequence number (ascending).
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for e in entries.flatten() {
        if let Some(seq) = parse_file_name(&e.file_name().to_string_lossy()) {
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A hash of everything that decides how a record aggregates: the event settings (field
/// names, `url_keep_query`, `heartbeat_seconds`), the visit settings, `url_visitors`, `url_channels`, `url_referrers` and this build's
/// aggregation version. A
/// checkpoint written under another fingerprint is not loaded.
pub fn fingerprint(cfg: &AggConfig) -> u64 {
    /// Bumped whenever the code changes what a record adds to the aggregates.
    const AGGREGATION_VERSION: u32 = 1;
    // The user agent's field names came later: the text leaves them out (so that the default
    // keeps an upgraded store) and adds them only when changed.
    // So did the client address's names and the country database, which are left out the
    // same way. The database is not part of it at all: a new or updated database applies to
    // what is aggregated from then on (and to the past by `rebuild-aggregates`), it does not
    // throw the store away.
    let mut event = cfg.event.clone();
    let ua = std::mem::take(&mut event.fields.ua);
    let ip = std::mem::take(&mut event.fields.ip);
    // Custom events' names and props came later still (their profiles: older buckets hold
    // none, `rebuild-aggregates` adds those the log still has).
    let name = std::mem::take(&mut event.fields.name);
    let props = std::mem::take(&mut event.fields.props);
    event.geo = crate::parse::geo::Geo::none();
    event.bot_networks = crate::parse::networks::BotNetworks::none();
    // Custom dimensions are found in a profile's key by name, so changing them never makes
    // the stored profiles wrong: they are left out too.
    event.custom.clear();
    let mut text = format!("v{AGGREGATION_VERSION} {event:?}")
        .replace(", ua: [], ip: [], name: [], props: []", "")
        .replace(", geo: None, bot_networks: None, custom: []", "");
    let defaults = crate::parse::event::FieldNames::default();
    if ua != defaults.ua {
        text.push_str(&format!(" ua {ua:?}"));
    }
    if ip != defaults.ip {
        text.push_str(&format!(" ip {ip:?}"));
    }
    if name != defaults.name || props != defaults.props {
        text.push_str(&format!(" event {name:?} {props:?}"));
    }
    if cfg.bots {
        text.push_str(" bots counted");
    }
    // Visits came later: the default settings add nothing, so that an upgrade keeps the store
    // (its older buckets hold no visits; `rebuild-aggregates` fills those the log still has).
    if cfg.visits != crate::agg::visits::VisitSettings::default() {
        text.push_str(&format!(" {:?}", cfg.visits));
    }
    // Likewise url visitors, on by default.
    if !cfg.url_visitors {
        text.push_str(" no url visitors");
    }
    // And the url × channel cells, and the url × referrer cells.
    if !cfg.url_channels {
        text.push_str(" no url channels");
    }
    if !cfg.url_referrers {
        text.push_str(" no url referrers");
    }
    crate::route::partition::vid_hash(&text)
}

/// What [`load`] found for one owner.
#[derive(Debug)]
pub struct Loaded {
    pub agg: Aggregates,
    /// The applied-offset vector of the loaded state; None when nothing was loaded (the
    /// state is empty and the log must be replayed from the window's start).
    pub applied: Option<Vec<u64>>,
    /// The newest link loaded, the newest number on disk (damaged or not), the base the chain
    /// starts from, links in the chain and their bytes.
    pub seq: u64,
    pub max_seq: u64,
    pub base_seq: u64,
    pub links: usize,
    pub base_bytes: u64,
    pub delta_bytes: u64,
    /// What was wrong with the store, one line each (damaged links, a changed shard count or
    /// fingerprint), for stderr and the damaged-checkpoint counter.
    pub problems: Vec<String>,
    /// When the loaded state was taken (ns), 0 when nothing was loaded.
    pub written_ns: u64,
}

/// A link of a chain, read and checked (CRC and header) but not yet applied.
struct Link {
    seq: u64,
    path: PathBuf,
    bytes: Vec<u8>,
    header: format::Header,
}

/// Loads owner `owner`'s newest usable chain (see the module doc). Never fails: a store that
/// cannot be read is reported in `problems` and loads as empty.
pub fn load(
    data_dir: &Path,
    owner: usize,
    shards: usize,
    fingerprint: u64,
    cfg: &AggConfig,
) -> Loaded {
    load_with(data_dir, owner, shards, Some(fingerprint), cfg)
}

/// [`load`], accepting a chain written under any fingerprint (`fingerprint` None): for
/// `pixeld rebuild-aggregates`, which recomputes what the logs hold under the new settings
/// and keeps the rest as it was computed.
pub fn load_with(
    data_dir: &Path,
    owner: usize,
    shards: usize,
    fingerprint: Option<u64>,
    cfg: &AggConfig,
) -> Loaded {
    let mut problems = Vec::new();
    let dir = owner_dir(data_dir, owner);
    let files = match list(&dir) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("cannot list the checkpoints: {e}"));
            Vec::new()
        }
    };
    let max_named = files.last().map_or(0, |f| f.0);
    let mut links: Vec<Option<Link>> = Vec::with_capacity(files.len());
    for (seq, path) in files {
        let link = match std::fs::read(&path) {
            Ok(bytes) => match format::decode_header(&bytes) {
                Ok(header) if header.seq != seq => {
                    problems.push(format!(
                        "{}: names checkpoint {} inside; ignored",
                        path.display(),
                        header.seq
                    ));
                    None
                }
                Ok(header) => Some(Link {
                    seq,
                    path,
                    bytes,
                    header,
                }),
                Err(e) => {
                    problems.push(format!("{}: {e}; ignored", path.display()));
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}; ignored", path.display()));
                None
            }
        };
        links.push(link);
    }
    let max_seq = links
        .iter()
        .flatten()
        .map(|l| l.seq)
        .max()
        .unwrap_or(0)
        .max(max_named);
    // Newest base first; each with the longest run of deltas that continue it.
    let bases: Vec<usize> = (0..links.len())
        .rev()
        .filter(|&i| {
            links[i]
                .as_ref()
                .is_some_and(|l| l.header.kind == Kind::Base)
        })
        .collect();
    for b in bases {
        let Some(base) = &links[b] else { continue };
        let h = &base.header;
        if h.shards as usize != shards || h.owner as usize != owner {
            problems.push(format!(
                "{}: written by a run with {} shards (owner {}), this one has {shards}; \
                 its aggregates are not loaded and the log rebuilds what it still holds",
                base.path.display(),
                h.shards,
                h.owner
            ));
            break;
        }
        if fingerprint.is_some_and(|f| f != h.fingerprint) {
            problems.push(format!(
                "{}: written under other [agg] event settings (field names, url_keep_query, \
                 heartbeat_seconds) or another pixeld aggregation version; its aggregates are not \
                 loaded and the log rebuilds what it still holds (to keep what the log no longer \
                 holds, stop pixeld and run `pixeld rebuild-aggregates` with the new config first)",
                base.path.display()
            ));
            break;
        }
        let mut chain = vec![b];
        let mut parent = base.seq;
        for (i, l) in links.iter().enumerate().skip(b + 1) {
            match l {
                Some(l)
                    if l.header.kind == Kind::Delta
                        && l.header.parent == parent
                        && l.header.shards == h.shards
                        && l.header.fingerprint == h.fingerprint =>
                {
                    chain.push(i);
                    parent = l.seq;
                }
                Some(l) if l.header.kind == Kind::Base => break,
                Some(l) => {
                    problems.push(format!(
                        "{}: does not continue checkpoint {parent}; the chain stops before it",
                        l.path.display()
                    ));
                    break;
                }
                None => {
                    problems.push(format!(
                        "the chain from checkpoint {} stops at checkpoint {parent}: the next link is damaged",
                        base.seq
                    ));
                    break;
                }
            }
        }
        // Apply; a body that fails to decode (its CRC passed) cuts the chain there.
        while !chain.is_empty() {
            let mut agg = Aggregates::new(cfg.clone());
            let mut last = None;
            let mut failed = None;
            let (mut base_bytes, mut delta_bytes) = (0u64, 0u64);
            for (n, &i) in chain.iter().enumerate() {
                let Some(l) = &links[i] else { break };
                match format::decode_into(&l.bytes, &mut agg) {
                    Ok(h) => {
                        if n == 0 {
                            base_bytes = l.bytes.len() as u64;
                        } else {
                            delta_bytes += l.bytes.len() as u64;
                        }
                        last = Some((l.seq, h));
                    }
                    Err(e) => {
                        problems.push(format!("{}: {e}", l.path.display()));
                        failed = Some(n);
                        break;
                    }
                }
            }
            match (failed, last) {
                (None, Some((seq, h))) => {
                    agg.mark_clean();
                    agg.epochs = repartition::read_epochs(data_dir);
                    problems.extend(agg.open_sealed(
                        &sealed_dir(data_dir, owner),
                        owner as u32,
                        crate::route::now_minute(),
                    ));
                    return Loaded {
                        agg,
                        applied: Some(h.applied),
                        seq,
                        max_seq,
                        base_seq: links[b].as_ref().map_or(0, |l| l.seq),
                        links: chain.len(),
                        base_bytes,
                        delta_bytes,
                        problems,
                        written_ns: h.written_ns,
                    };
                }
                (Some(n), _) => chain.truncate(n),
                (None, None) => break,
            }
        }
    }
    Loaded {
        agg: Aggregates::new(cfg.clone()),
        applied: None,
        seq: 0,
        max_seq,
        base_seq: 0,
        links: 0,
        base_bytes: 0,
        delta_bytes: 0,
        problems,
        written_ns: 0,
    }
}

/// A checkpoint's state copied out of the shard, waiting to be encoded (see
/// [`Writer::snapshot`]).
pub struct Snapshot {
    header: Header,
    agg: Aggregates,
    /// The hours and days this checkpoint seals (their files are written before it).
    pub seals: Vec<SealJob>,
}

impl Snapshot {
    /// Encodes it (CPU only: no I/O, no shared state), stamped with the time of encoding:
    /// the checkpoint, and a sealed file per job (a day merged from its hours here).
    pub fn encode(mut self) -> Pending {
        self.header.written_ns = crate::sys::now_ns();
        let sealed = self
            .seals
            .iter()
            .map(|j| {
                let h = SealedHeader {
                    tier: j.tier,
                    shards: self.header.shards,
                    owner: self.header.owner,
                    number: j.number,
                    written_ns: self.header.written_ns,
                };
                (j.tier, j.number, sealed::encode(&h, &j.bucket()))
            })
            .collect();
        let bytes = format::encode_consuming(self.agg, &self.header);
        Pending {
            seq: self.header.seq,
            kind: self.header.kind,
            bytes,
            sealed,
            seals: self.seals,
            applied: self.header.applied,
        }
    }
}

/// A checkpoint encoded and waiting to be written (see [`Snapshot::encode`]).
pub struct Pending {
    seq: u64,
    kind: Kind,
    bytes: Vec<u8>,
    /// Sealed files to write before the checkpoint: tier, number, bytes.
    sealed: Vec<(Res, i64, Vec<u8>)>,
    /// Their jobs, handed back to the state if the checkpoint fails.
    pub seals: Vec<SealJob>,
    pub applied: Vec<u64>,
}

impl Pending {
    /// Bytes of the checkpoint and its sealed files.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.sealed.iter().map(|s| s.2.len()).sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn is_base(&self) -> bool {
        self.kind == Kind::Base
    }
}

/// Appends one owner's checkpoints.
pub struct Writer {
    dir: PathBuf,
    owner: u32,
    shards: u32,
    fingerprint: u64,
    /// The newest link written (0: none) and the base it continues.
    seq: u64,
    base_seq: u64,
    links: usize,
    base_bytes: u64,
    delta_bytes: u64,
    /// The next checkpoint must be a base (nothing loaded, or a write failed after its
    /// buckets were marked clean).
    force_base: bool,
    /// The applied vector of the newest durable link.
    written_applied: Option<Vec<u64>>,
}

/// A chain is folded into a new base after this many deltas.
const MAX_DELTAS: usize = 64;

impl Writer {
    /// A writer continuing what [`load`] found (a new base first when nothing was loaded).
    pub fn new(data_dir: &Path, owner: usize, shards: usize, fingerprint: u64, l: &Loaded) -> Self {
        Writer {
            dir: owner_dir(data_dir, owner),
            owner: owner as u32,
            shards: shards as u32,
            fingerprint,
            // New links get numbers above every file on disk, so that a link written after a
            // damaged one can never be mistaken for a continuation of an older chain.
            seq: l.max_seq,
            base_seq: l.base_seq,
            links: l.links,
            base_bytes: l.base_bytes,
            delta_bytes: l.delta_bytes,
            force_base: l.applied.is_none() || l.seq != l.max_seq,
            written_applied: l.applied.clone(),
        }
    }

    /// The next checkpoint of `agg` at `applied`, copied out (see
    /// [`Aggregates::checkpoint_snapshot`]) and not yet encoded: the part that must run on the
    /// shard's executor, between two increments. [`Snapshot::encode`] may run on any thread.
    pub fn snapshot(&mut self, agg: &mut Aggregates, applied: Vec<u64>, now_min: i64) -> Snapshot {
        let base = self.force_base || self.links > MAX_DELTAS || self.delta_bytes > self.base_bytes;
        let seq = self.seq + 1;
        let (snap, seals) = agg.checkpoint_snapshot(base, now_min);
        // Until this one is durable, another delta cannot follow it safely.
        let parent = if base { 0 } else { self.seq };
        self.force_base = true;
        Snapshot {
            header: Header {
                version: format::VERSION,
                kind: if base { Kind::Base } else { Kind::Delta },
                shards: self.shards,
                owner: self.owner,
                seq,
                parent,
                fingerprint: self.fingerprint,
                written_ns: 0,
                applied,
            },
            agg: snap,
            seals,
        }
    }

    /// Writes `p` durably — its sealed files first, then the checkpoint that lists them —
    /// and returns where the sealed files are; after a base, deletes the chains before the
    /// previous one. On error the next checkpoint is a base (what `p` held was marked clean).
    pub async fn commit(&mut self, p: &Pending) -> Result<Vec<(Res, i64, PathBuf)>, StoreError> {
        let sealed_dir = self.dir.join(SEALED);
        let dir = if p.sealed.is_empty() {
            &self.dir
        } else {
            &sealed_dir
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Err(StoreError::Io {
                path: dir.clone(),
                source: e,
            });
        }
        let mut written = Vec::with_capacity(p.sealed.len());
        for (tier, number, bytes) in &p.sealed {
            let path = sealed_dir.join(sealed::file_name(*tier, *number));
            crate::log::segment::write_file_durably(&path, bytes)
                .await
                .map_err(|source| StoreError::Write {
                    path: path.clone(),
                    source,
                })?;
            written.push((*tier, *number, path));
        }
        let path = self.dir.join(file_name(p.seq));
        crate::log::segment::write_file_durably(&path, &p.bytes)
            .await
            .map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        self.force_base = false;
        self.seq = p.seq;
        self.written_applied = Some(p.applied.clone());
        let len = p.bytes.len() as u64;
        if p.kind == Kind::Base {
            let previous_base = self.base_seq;
            self.base_seq = p.seq;
            self.links = 1;
            self.base_bytes = len;
            self.delta_bytes = 0;
            // Keep the previous chain as a fallback; older ones go.
            if let Ok(files) = list(&self.dir) {
                for (seq, path) in files {
                    if seq < previous_base {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        } else {
            self.links += 1;
            self.delta_bytes += len;
        }
        Ok(written)
    }

    /// The newest link written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The applied vector of the newest durable link (None: none yet).
    pub fn written_applied(&self) -> Option<&[u64]> {
        self.written_applied.as_deref()
    }
}

/// Writes checkpoint `seq` of `owner` durably without an executor (temp, fsync, rename,
/// directory fsync): for offline tools, which hold the data dir's lock.
pub fn write_offline(
    data_dir: &Path,
    owner: usize,
    seq: u64,
    bytes: &[u8],
) -> Result<PathBuf, StoreError> {
    use std::io::Write as _;
    let dir = owner_dir(data_dir, owner);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(file_name(seq));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(path)
}

/// Why a checkpoint could not be decoded, for tools that read one file.
pub fn read_header(path: &Path) -> Result<format::Header, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    format::decode_header(&bytes).map_err(|e: FormatError| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::AggConfig;

    /// The default settings keep the fingerprint the build before dimensions wrote (read from
    /// a checkpoint header that build, `09aa723`, wrote with the default config), so an
    /// upgrade keeps its store; a changed User-Agent field or `agg.bots = "include"` does not.
    #[test]
    fn the_default_fingerprint_is_the_one_before_dimensions() {
        let default = AggConfig::default();
        assert_eq!(fingerprint(&default), 7_549_739_071_752_081_979);
        let mut ua = default.clone();
        ua.event.fields.ua = vec!["agent".into()];
        let bots = AggConfig {
            bots: true,
            ..default.clone()
        };
        let no_url_channels = AggConfig {
            url_channels: false,
            ..default.clone()
        };
        let mut props = default.clone();
        props.event.fields.props = vec!["properties".into()];
        for other in [ua, bots, no_url_channels, props] {
            assert_ne!(fingerprint(&other), fingerprint(&default));
        }
    }
}
