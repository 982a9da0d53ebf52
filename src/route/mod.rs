//! Routing: from a logged record to the increments of the shards that own its keys, over a
//! full mesh of single-producer single-consumer rings (Storm's fields grouping, inside one
//! process).
//!
//! The shard that appended a record parses it ([`crate::parse::event`]) and makes up to three
//! increments: the url's (to `hash(url)`'s shard), the referrer domain's for a pageview (to
//! `hash(ref_domain)`'s) and the visitor's (to `hash(vid)`'s); the hashes and their seeds are
//! in [`partition`]. An increment
//! for this shard is applied at once — or, inside a [`Router::gather`] scope (the records of
//! one receive, one slice of the catch-up), with the others of the scope, in chunks whose
//! cache-missing lookups are done together first (`Aggregates::apply_batch`); a scope never
//! spans an await, so nothing reads the aggregates before it is applied. The others are
//! appended to a per-peer [`Batch`] and
//! shipped whole through glommio's channel mesh (`shared_channel`: a lock-free SPSC ring per
//! ordered pair of executors, woken by eventfd). A batch is sent when it reaches
//! `BATCH_INCS` increments — by the ingest loop right after its receive batch — or by the
//! ticker within `FLUSH_EVERY`.
//!
//! Backpressure: sending awaits room in the ring, and the ingest loop that called
//! [`Router::flush`] awaits with it, so a slow owner slows the socket reads of the shards
//! that feed it (for UDP this ends as counted kernel drops), never a silent drop and never a
//! block: every shard keeps draining its own rings in separate tasks while it waits. The
//! waits are counted (`pixeld_route_full_waits_total`).
//!
//! Only records that were appended are routed, so the aggregates are a function of the log
//! and the catch-up at start ([`rebuild::rebuild`]) reproduces them.
//!
//! Offsets: rings are FIFO, so a source stamps each batch (and, when it has nothing to send,
//! a `Mark`) with the next offset of its log that ingest has not routed yet. An owner keeps,
//! per source, the highest stamp it has applied: its *applied vector*, which a checkpoint
//! records ([`checkpoint`]) and a start replays from. During the catch-up after a start,
//! replayed and live increments share the rings; the replay of a source ends with a
//! `Rebuilt(end)` message, and an owner checkpoints only once every source's has arrived.

pub use rebuild::{rebuild, ReplayFrom};

pub mod checkpoint;
pub mod partition;
pub mod rebuild;
pub mod recompute;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;

use crate::agg::{Aggregates, Batch, Inc, IncKind};
use crate::log::reader::{ShardReader, Start};
use crate::log::Log;
use crate::metrics::{AggOutcome, ShardStats};
use crate::parse::event::{Action, EventParser};
use partition::{owner_of_key, vid_hash, Epochs, REF_SEED, URL_SEED};

/// A batch is shipped once it holds this many increments.
pub const BATCH_INCS: usize = 1024;
/// How many of its own increments a shard gathers, inside a [`Gather`] scope, before it
/// applies them together (see [`Aggregates::apply_batch`]).
pub const LOCAL_BATCH: usize = 256;
/// Partial batches are shipped at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// How often the ticker wakes while no batch waits for a peer (one shard, or a quiet mesh):
/// its other work (marks every 200 ms, eviction every 2 s, the watchdog's heartbeat) needs
/// no more, and each wake-up of an idle executor costs ~20 µs of CPU. The first increment
/// queued for a peer wakes it at once (`Router::send`), so a partial batch still ships
/// within [`FLUSH_EVERY`].
pub const IDLE_TICK: Duration = Duration::from_millis(50);
/// While a large minute is folded in slices (`agg::cells::UrlFold`), how often the ticker
/// folds its next slice (of up to `agg::FOLD_SLICE`): at most a fifth of the shard's time.
pub const FOLD_AGAIN: Duration = Duration::from_millis(20);
/// Ring capacity, in batches, per ordered pair of shards.
pub const RING_BATCHES: usize = 64;
/// How far behind its wall clock a live shard puts its receive clock: more than a record
/// can take from its receive time to its routing (a TCP read parked under push-back, a
/// slow HTTP body), so that no record routed later was received before it.
pub const CLOCK_MARGIN_MS: i64 = 60_000;

/// What crosses a ring.
#[derive(Debug)]
pub enum RouteMsg {
    Batch(Batch),
    /// Nothing more for this owner from records below this offset of the sender's log, and
    /// the sender's receive clock (see [`Batch::clock_ms`]).
    Mark(u64, i64),
    /// The sender finished replaying its log up to this offset (its end at start): every
    /// increment of the replay is ahead of this.
    Rebuilt(u64),
    /// A batch the sender (its owner) has applied, emptied and sent back to the shard that
    /// filled it, to be filled again: a batch's room (about 200 KB) is then allocated once,
    /// not for every batch by one thread and freed by another — which had two shards spend
    /// a tenth of their time in the kernel clearing fresh pages
    /// (docs/performance-history.md, "Batches sent back").
    Spare(Batch),
}

/// Emptied batches a shard keeps per peer, for its next batches to that peer (see
/// [`RouteMsg::Spare`]); more are freed.
pub const SPARES_PER_PEER: usize = 2;

/// The mesh every shard joins at start.
pub type Mesh =
    glommio::channels::channel_mesh::MeshBuilder<RouteMsg, glommio::channels::channel_mesh::Full>;

/// Makes the mesh for `shards` shards.
pub fn mesh(shards: usize) -> Mesh {
    glommio::channels::channel_mesh::MeshBuilder::full(shards, RING_BATCHES)
}

/// The current minute since the epoch.
pub fn now_minute() -> i64 {
    (crate::sys::now_ns() / 60_000_000_000) as i64
}

/// An owner's hours and days to recompute from the records below its checkpoint (their
/// sealed files were lost), sorted.
#[derive(Debug, Clone, Default)]
pub struct Repairs {
    pub hours: Vec<i64>,
    pub days: Vec<i64>,
}

impl Repairs {
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.days.is_empty()
    }

    /// Whether an increment of event minute `minute` goes to a bucket being recomputed.
    fn covers(&self, minute: i64) -> bool {
        self.hours.binary_search(&minute.div_euclid(60)).is_ok()
            || self.days.binary_search(&minute.div_euclid(1440)).is_ok()
    }
}

/// Which event minutes aggregate at the current time: from `floor` (the day window's
/// start) to `future` minutes past the receive time.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub floor: i64,
    pub future: i64,
    /// `agg.visit_late_allowance`: a hit received later than this after its event time does
    /// not count for visits.
    pub visit_late_allowance_ms: i64,
    /// `agg.bots = "include"`: bots' hits count like anyone's.
    pub bots: bool,
}

impl Window {
    /// The window of `agg`'s settings at minute `now_min`.
    pub fn at(agg: &Aggregates, now_min: i64) -> Window {
        Window {
            floor: agg.day_floor(now_min),
            future: agg.cfg.future_minutes,
            visit_late_allowance_ms: agg.cfg.visits.late_allowance_ms,
            bots: agg.cfg.bots,
        }
    }
}

/// Parses one record's message and makes its increments: unless a bot sent it and `agg.bots`
/// excludes bots, the url's, the referrer domain's for a pageview, and the visitor's (with a
/// pageview's or custom event's profile: its dimensions, `agg::dims`) — a bot's pageview or
/// event makes its profile's increment alone —, each with the shard that
/// owns it (of `shards`; a hit
/// without a visitor id stays on `me`, the shard that appended it; a visitor's owner follows
/// `epochs` across shard-count changes), as `emit(owner, inc, site, key, profile)`: `profile`
/// is empty but for a pageview's increments of its url (its referrer domain: the url ×
/// referrer cells) and of its visitor (its profile key: counted in the profile cells, and
/// for a pageview what the visit it may enter breaks down by). Counts the record's
/// outcome in `stats`. The one place that decides what a record adds to the aggregates,
/// shared by live routing, the catch-up and `pixeld check --aggregates`.
pub fn increments(
    parser: &mut EventParser,
    stats: &crate::metrics::AggStats,
    window: Window,
    (me, shards, epochs): (usize, usize, &Epochs),
    recv_ts: u64,
    msg: &[u8],
    mut emit: impl FnMut(usize, Inc, &str, &str, &str),
) {
    let late_allowance_ms = window.visit_late_allowance_ms;
    let s = stats;
    let ev = match parser.parse_message(msg) {
        Ok(ev) => ev,
        Err(e) => {
            s.count_unparsed(e);
            return;
        }
    };
    if ev.invalid_utf8 {
        ShardStats::bump(&s.invalid_utf8, 1);
    }
    if ev.bad_timestamp {
        ShardStats::bump(&s.bad_timestamp, 1);
    }
    if ev.bad_props {
        ShardStats::bump(&s.bad_props, 1);
    }
    let recv_ms = (recv_ts / 1_000_000) as i64;
    let ts_ms = match ev.ts_ms {
        Some(t) => t,
        None => {
            ShardStats::bump(&s.no_timestamp, 1);
            recv_ms
        }
    };
    let minute = ts_ms.div_euclid(60_000);
    if ts_ms > recv_ms + window.future * 60_000 || minute < window.floor {
        s.count(AggOutcome::OutOfWindow);
        return;
    }
    let pv = ev.action == Action::Pageview;
    let engaged = ev.engaged_seconds;
    let vid = (!ev.vid.is_empty()).then(|| vid_hash(ev.vid));
    // A visitor's pageviews go, with their dimensions, to the visitor's owner (a hit without
    // a visitor id to the shard that appended it).
    let owner = vid.map_or(me, |h| epochs.owner_of_visitor(h, minute, shards));
    // A pageview's or custom event's profile (its dimensions, an event's name among them;
    // a heartbeat has none).
    let profile = ev.profile;
    if ev.bot && !window.bots {
        // Counted in the `bot` dimension alone: its profile's increment, nothing else.
        if !profile.is_empty() {
            emit(
                owner,
                Inc::new(IncKind::Profile, pv, minute, 0, vid),
                ev.site,
                ev.profile,
                "",
            );
        }
        s.count(AggOutcome::Bot);
        return;
    }
    s.count(AggOutcome::Aggregated);
    if vid.is_none() {
        ShardStats::bump(&s.no_vid, 1);
    }
    // A pageview's channel and referrer domain ride with its url: the url × channel and url
    // × referrer cells.
    emit(
        owner_of_key(URL_SEED, ev.url, shards),
        Inc::new(IncKind::Url, pv, minute, engaged, vid).with_channel(ev.channel),
        ev.site,
        ev.url,
        if pv { ev.ref_domain } else { "" },
    );
    if pv {
        emit(
            owner_of_key(REF_SEED, ev.ref_domain, shards),
            Inc::new(IncKind::Ref, pv, minute, 0, None),
            ev.site,
            ev.ref_domain,
            "",
        );
    }
    // A hit without a visitor id still counts in the totals, on the shard that appended it.
    // A pageview's or custom event's profile rides along, counted by the same owner: one
    // increment, not two.
    let mut inc = Inc::new(IncKind::Visitor, pv, minute, engaged, vid);
    let mut page = "";
    if vid.is_some() && matches!(ev.action, Action::Pageview | Action::Heartbeat) {
        // Decided here, from the record alone, so that the catch-up decides the same.
        if recv_ms.saturating_sub(ts_ms) > late_allowance_ms {
            ShardStats::bump(&s.visit_too_late, 1);
        } else {
            inc = inc.with_visit(ts_ms);
            if pv {
                // The page may be its visit's entry or exit, and its profile the visit's
                // dimensions.
                page = ev.url;
            }
        }
    }
    emit(owner, inc, ev.site, page, profile);
}

/// A scope of [`Router::gather`]: its end applies what gathered.
pub struct Gather<'r>(&'r Router);

impl Drop for Gather<'_> {
    fn drop(&mut self) {
        let r = self.0;
        r.gathering.set(r.gathering.get().saturating_sub(1));
        if r.gathering.get() == 0 {
            r.settle();
        }
    }
}

/// One shard's router: its parser, its partition of the aggregates, its outgoing batches.
pub struct Router {
    me: usize,
    /// `agg.enabled`: when false, appended records are only counted
    /// (`AggOutcome::AggregationOff`), never parsed or routed.
    aggregating: bool,
    shards: usize,
    /// Visitor ownership across shard-count changes (the store's `agg/partitions`).
    epochs: Epochs,
    pub agg: Rc<RefCell<Aggregates>>,
    parser: RefCell<EventParser>,
    pending: RefCell<Vec<Batch>>,
    /// Per peer: emptied batches it sent back, to be filled again (see [`RouteMsg::Spare`]).
    spares: RefCell<Vec<Vec<Batch>>>,
    /// This shard's own increments made inside a [`Gather`] scope, applied together
    /// ([`Aggregates::apply_batch`]) when [`LOCAL_BATCH`] have gathered and when the scope
    /// ends; outside one, each is applied as it is made.
    local: RefCell<Batch>,
    /// Open [`Gather`] scopes.
    gathering: Cell<u32>,
    senders: Option<Senders<RouteMsg>>,
    stats: Arc<ShardStats>,
    /// The minute used for window checks, refreshed by the ticker and each flush.
    now_min: Cell<i64>,
    rebuilt_peers: Cell<usize>,
    /// The next offset of this shard's log that ingest has not routed (the stamp).
    live_next: Cell<u64>,
    /// While a replayed record is routed: its offset, so that `send` skips the owners whose
    /// checkpoint already holds it (`floors`, per owner).
    replay_at: Cell<Option<u64>>,
    floors: RefCell<Vec<u64>>,
    /// Per owner: hours and days whose sealed file was lost (sorted), to which records below
    /// its floor are still sent, as repairs (`Inc::repair`).
    repairs: RefCell<Vec<Repairs>>,
    /// Per source: the highest stamp applied here, and whether its replay has arrived.
    applied: RefCell<Vec<u64>>,
    caught_up: RefCell<Vec<bool>>,
    /// Per peer: the last stamp sent (batch or mark), and the receive clock sent with it.
    marked: RefCell<Vec<u64>>,
    marked_clock: RefCell<Vec<i64>>,
    /// This shard's receive clock: while it replays its log, the receive time of the record
    /// replayed last (the log is in receive order, and live records come later); once its
    /// replay is done, the wall clock less [`CLOCK_MARGIN_MS`]. 0: not known yet.
    replay_clock: Cell<i64>,
    replay_done: Cell<bool>,
    /// Per source: the highest receive clock it has sent (this shard's own entry unused).
    clocks: RefCell<Vec<i64>>,
    /// How `send` wakes a ticker waiting [`IDLE_TICK`] when an increment for a peer starts
    /// a batch (the ticker takes the receiver; a wake-up left over from a busy spell only
    /// makes its next idle wait one flush period long).
    wake: LocalSender<()>,
    woken: RefCell<Option<LocalReceiver<()>>>,
}

impl Router {
    /// A router for shard `me` of the mesh `senders` (None: a single shard without a mesh).
    pub fn new(
        agg: Aggregates,
        senders: Option<Senders<RouteMsg>>,
        stats: Arc<ShardStats>,
    ) -> Rc<Self> {
        let (me, shards) = senders
            .as_ref()
            .map_or((0, 1), |s| (s.peer_id(), s.nr_consumers()));
        let parser = EventParser::new(agg.cfg.event.clone());
        let epochs = agg.epochs.clone();
        let (wake, woken) = glommio::channels::local_channel::new_bounded(1);
        Rc::new(Router {
            me,
            aggregating: agg.cfg.enabled,
            shards,
            epochs,
            agg: Rc::new(RefCell::new(agg)),
            parser: RefCell::new(parser),
            pending: RefCell::new((0..shards).map(|_| Batch::default()).collect()),
            spares: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
            local: RefCell::new(Batch::default()),
            gathering: Cell::new(0),
            senders,
            stats,
            now_min: Cell::new(now_minute()),
            rebuilt_peers: Cell::new(0),
            live_next: Cell::new(0),
            replay_at: Cell::new(None),
            floors: RefCell::new(vec![0; shards]),
            repairs: RefCell::new(vec![Repairs::default(); shards]),
            applied: RefCell::new(vec![0; shards]),
            caught_up: RefCell::new(vec![false; shards]),
            marked: RefCell::new(vec![0; shards]),
            marked_clock: RefCell::new(vec![0; shards]),
            replay_clock: Cell::new(0),
            replay_done: Cell::new(false),
            clocks: RefCell::new(vec![0; shards]),
            wake,
            woken: RefCell::new(Some(woken)),
        })
    }

    /// Sets up the catch-up after a start: the log's end at open (`end`, the first live
    /// offset), per owner the offset of this shard's log its loaded state already holds
    /// (`floors`), per source the applied vector this shard loaded (`applied`), and per owner
    /// the hours and days to recompute from records below its floor (`repairs`).
    pub fn start_catchup(
        &self,
        end: u64,
        floors: Vec<u64>,
        applied: Vec<u64>,
        repairs: Vec<Repairs>,
    ) {
        self.live_next.set(end);
        *self.floors.borrow_mut() = floors;
        *self.applied.borrow_mut() = applied;
        *self.repairs.borrow_mut() = repairs;
    }

    /// Whether this owner has applied every source's replay (and its own).
    pub fn complete(&self) -> bool {
        self.caught_up.borrow().iter().all(|c| *c)
    }

    /// The applied vector to checkpoint (this shard's own entry is its live stamp, since its
    /// own increments are applied by the end of the synchronous step that made them — a
    /// [`Gather`] scope never spans an await). Meaningful once [`Self::complete`].
    pub fn applied_vector(&self) -> Vec<u64> {
        self.settle();
        let mut a = self.applied.borrow().clone();
        if let Some(me) = a.get_mut(self.me) {
            *me = (*me).max(self.live_next.get());
        }
        a
    }

    fn note_applied(&self, src: usize, upto: u64) {
        if let Some(a) = self.applied.borrow_mut().get_mut(src) {
            *a = (*a).max(upto);
        }
    }

    /// Routes one record ingest has just appended at `offset` (`msg` without its syslog
    /// header), advancing the stamp.
    pub fn live(&self, offset: u64, recv_ts: u64, msg: &[u8]) {
        if self.aggregating {
            self.record_message(recv_ts, msg);
        } else {
            self.stats
                .agg
                .count(crate::metrics::AggOutcome::AggregationOff);
        }
        self.live_next.set(offset + 1);
    }

    /// Routes one record replayed from the log at start, to the owners whose loaded state
    /// does not hold it yet.
    fn replayed(&self, offset: u64, recv_ts: u64, bytes: &[u8]) {
        let recv_ms = (recv_ts / 1_000_000) as i64;
        self.replay_clock.set(self.replay_clock.get().max(recv_ms));
        self.replay_at.set(Some(offset));
        self.record(recv_ts, bytes);
        self.replay_at.set(None);
    }

    pub fn shard(&self) -> usize {
        self.me
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Parses one appended record (raw, syslog header included) and routes its increments.
    pub fn record(&self, recv_ts: u64, bytes: &[u8]) {
        let msg = match crate::parse::syslog::parse(bytes) {
            Ok(s) => s.msg,
            Err(_) => bytes,
        };
        self.record_message(recv_ts, msg);
    }

    /// Routes one appended record whose syslog header the caller already stripped (`msg` is
    /// the whole record when it had none).
    pub fn record_message(&self, recv_ts: u64, msg: &[u8]) {
        let now = self.now_min.get();
        let window = Window::at(&self.agg.borrow(), now);
        increments(
            &mut self.parser.borrow_mut(),
            &self.stats.agg,
            window,
            (self.me, self.shards, &self.epochs),
            recv_ts,
            msg,
            |owner, inc, site, key, aux| self.send(owner, inc, site, key, aux, now),
        );
    }

    fn send(&self, owner: usize, mut inc: Inc, site: &str, key: &str, aux: &str, now: i64) {
        if let Some(at) = self.replay_at.get() {
            if self.floors.borrow().get(owner).is_some_and(|&f| at < f) {
                // The owner holds it, unless its hour or day is one to recompute.
                if !self
                    .repairs
                    .borrow()
                    .get(owner)
                    .is_some_and(|r| r.covers(inc.minute))
                {
                    return;
                }
                inc.repair = true;
            }
        }
        if owner == self.me || self.senders.is_none() {
            ShardStats::bump(&self.stats.agg.local_incs, 1);
            if self.gathering.get() == 0 {
                self.agg.borrow_mut().apply(&inc, site, key, aux, now);
                return;
            }
            let full = {
                let mut l = self.local.borrow_mut();
                l.push_inc_with(inc, site, key, aux);
                l.len() >= LOCAL_BATCH
            };
            if full {
                self.settle_at(now);
            }
        } else if let Some(b) = self.pending.borrow_mut().get_mut(owner) {
            b.push_inc_with(inc, site, key, aux);
            ShardStats::bump(&self.stats.agg.queued_incs, 1);
            if b.len() == 1 {
                // Full already: a wake-up is on its way.
                let _ = self.wake.try_send(());
            }
        }
    }

    /// Opens a scope in which this shard's own increments gather and are applied together,
    /// [`LOCAL_BATCH`] at a time and the rest when the scope ends. What an ingest loop wraps
    /// around the records of one receive, and the catch-up around one slice of the log. It
    /// must end before the next await (nothing else may read the aggregates meanwhile).
    pub fn gather(&self) -> Gather<'_> {
        self.gathering.set(self.gathering.get() + 1);
        Gather(self)
    }

    /// Applies this shard's own increments gathered so far (see [`Router::gather`]).
    pub fn settle(&self) {
        self.settle_at(self.now_min.get());
    }

    fn settle_at(&self, now: i64) {
        let mut local = self.local.take();
        if !local.is_empty() {
            self.agg.borrow_mut().apply_batch(&local, now);
            local.clear();
        }
        *self.local.borrow_mut() = local;
    }

    /// Ships every batch holding at least `threshold` increments (1: every non-empty one),
    /// waiting for ring room — the backpressure point of the ingest loops.
    pub async fn flush(&self, threshold: usize) {
        self.settle();
        self.now_min.set(now_minute());
        let Some(senders) = &self.senders else {
            return;
        };
        for peer in 0..self.shards {
            if peer == self.me {
                continue;
            }
            let batch = {
                let mut p = self.pending.borrow_mut();
                match p.get_mut(peer) {
                    Some(b) if b.len() >= threshold.max(1) => self.take_stamped(peer, b),
                    _ => continue,
                }
            };
            let incs = batch.len() as u64;
            let s = &self.stats.agg;
            match senders.try_send_to(peer, RouteMsg::Batch(batch)) {
                Ok(()) => {}
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => {
                    ShardStats::add(&s.ring_full_waits, 1);
                    let t = Instant::now();
                    if senders.send_to(peer, msg).await.is_err() {
                        ShardStats::add(&s.lost_incs, incs);
                        continue;
                    }
                    ShardStats::add(&s.ring_wait_nanos, t.elapsed().as_nanos() as u64);
                }
                Err(_) => {
                    // The peer has stopped (shutdown): its aggregates are rebuilt at the next start.
                    ShardStats::add(&s.lost_incs, incs);
                    continue;
                }
            }
            self.count_shipped(incs);
        }
    }

    /// Takes `peer`'s pending batch, stamped with the live offset (see the module doc).
    fn take_stamped(&self, peer: usize, pending: &mut Batch) -> Batch {
        let spare = self
            .spares
            .borrow_mut()
            .get_mut(peer)
            .and_then(Vec::pop)
            .unwrap_or_default();
        let mut batch = std::mem::replace(pending, spare);
        batch.upto = self.live_next.get();
        batch.clock_ms = self.receive_clock();
        self.set_marked(peer, batch.upto, batch.clock_ms);
        batch
    }

    fn set_marked(&self, peer: usize, upto: u64, clock_ms: i64) {
        if let Some(m) = self.marked.borrow_mut().get_mut(peer) {
            *m = upto;
        }
        if let Some(m) = self.marked_clock.borrow_mut().get_mut(peer) {
            *m = clock_ms;
        }
    }

    /// This shard's receive clock (see `replay_clock`).
    fn receive_clock(&self) -> i64 {
        if self.replay_done.get() {
            let wall = (crate::sys::now_ns() / 1_000_000) as i64 - CLOCK_MARGIN_MS;
            self.replay_clock.set(self.replay_clock.get().max(wall));
        }
        self.replay_clock.get()
    }

    /// The receive clock below which no source will send this owner a record any more: the
    /// lowest of every source's (0 while one has not said).
    fn owner_clock(&self) -> i64 {
        let own = self.receive_clock();
        self.clocks
            .borrow()
            .iter()
            .enumerate()
            .filter(|&(src, _)| src != self.me)
            .map(|(_, &c)| c)
            .fold(own, i64::min)
    }

    fn note_clock(&self, src: usize, clock_ms: i64) {
        if let Some(c) = self.clocks.borrow_mut().get_mut(src) {
            *c = (*c).max(clock_ms);
        }
    }

    /// Tells every peer that has had no batch since the stamp moved where the stamp is, so
    /// that its applied vector advances on a quiet ring too. Never waits: a full ring has
    /// batches coming, which carry the stamp.
    fn send_marks(&self) {
        let Some(senders) = &self.senders else {
            return;
        };
        let next = self.live_next.get();
        let clock = self.receive_clock();
        for peer in (0..self.shards).filter(|&p| p != self.me) {
            // A quiet source still moves its clock on, so that owners can forget visits.
            let stale = self.marked.borrow().get(peer).is_some_and(|&m| m < next)
                || self
                    .marked_clock
                    .borrow()
                    .get(peer)
                    .is_some_and(|&c| c + 1000 <= clock);
            let empty = self
                .pending
                .borrow()
                .get(peer)
                .is_some_and(|b| b.is_empty());
            if stale
                && empty
                && senders
                    .try_send_to(peer, RouteMsg::Mark(next, clock))
                    .is_ok()
            {
                self.set_marked(peer, next, clock);
            }
        }
    }

    fn count_shipped(&self, incs: u64) {
        ShardStats::add(&self.stats.agg.sent_incs, incs);
        ShardStats::add(&self.stats.agg.sent_batches, 1);
    }

    /// Ships every full batch whose ring has room, without waiting; false when a ring was full
    /// (the caller should then `flush` and wait). Used by the rebuild, which reads the log
    /// synchronously and must not let batches pile up.
    fn try_ship(&self) -> bool {
        let Some(senders) = &self.senders else {
            return true;
        };
        let mut all = true;
        for peer in (0..self.shards).filter(|&p| p != self.me) {
            let mut p = self.pending.borrow_mut();
            let Some(b) = p.get_mut(peer) else { continue };
            if b.len() < BATCH_INCS {
                continue;
            }
            let batch = self.take_stamped(peer, b);
            let incs = batch.len() as u64;
            match senders.try_send_to(peer, RouteMsg::Batch(batch)) {
                Ok(()) => self.count_shipped(incs),
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(
                    RouteMsg::Batch(batch),
                ))) => {
                    let spare = std::mem::replace(b, batch);
                    self.keep_spare(peer, spare);
                    all = false;
                }
                Err(_) => ShardStats::add(&self.stats.agg.lost_incs, incs),
            }
        }
        all
    }

    /// Ships partial batches every [`FLUSH_EVERY`], beats the shard's heartbeat (the
    /// supervisor feeds systemd's watchdog only while every shard's beats), and frees expired buckets (and publishes the memory gauges) every 2 s, until
    /// `stop`.
    pub async fn tick(self: Rc<Self>, stop: Arc<AtomicBool>) {
        let mut last_evict = Instant::now();
        let mut last_mark = Instant::now();
        let mut last_fold = Instant::now();
        // A large minute left half folded: the idle wait is cut to the next slice's time.
        let mut half = false;
        let woken = self.woken.borrow_mut().take();
        self.publish_memory();
        while !stop.load(Ordering::Relaxed) {
            self.stats
                .heartbeat_ns
                .store(crate::sys::now_ns(), Ordering::Relaxed);
            match &woken {
                Some(woken) if !self.has_pending() => {
                    ShardStats::bump(&self.stats.agg.ticker_idle_waits, 1);
                    let first =
                        futures_lite::future::or(async { woken.recv().await.is_some() }, async {
                            glommio::timer::sleep(if half { FOLD_AGAIN } else { IDLE_TICK }).await;
                            false
                        })
                        .await;
                    if first {
                        ShardStats::bump(&self.stats.agg.ticker_woken, 1);
                        // An increment was queued: let the batch fill for one period.
                        glommio::timer::sleep(FLUSH_EVERY).await;
                    }
                }
                _ => glommio::timer::sleep(FLUSH_EVERY).await,
            }
            self.flush(1).await;
            if last_mark.elapsed() >= Duration::from_millis(200) {
                last_mark = Instant::now();
                self.send_marks();
            }
            if last_evict.elapsed() >= Duration::from_secs(2) {
                last_evict = Instant::now();
                last_fold = last_evict;
                let clock = self.owner_clock();
                let mut agg = self.agg.borrow_mut();
                // The minutes that ended: into their hours.
                half = self.fold_pass(&mut agg, half);
                agg.evict(self.now_min.get());
                if clock > 0 {
                    agg.visits.sweep(clock);
                }
                if self.complete() {
                    agg.end_repairs();
                }
                drop(agg);
                self.publish_memory();
            } else if half && last_fold.elapsed() >= FOLD_AGAIN {
                // A large minute left half folded: its next slice.
                last_fold = Instant::now();
                half = self.fold_pass(&mut self.agg.borrow_mut(), true);
            }
        }
    }

    /// One folding pass of the ticker ([`Aggregates::fold_ended`]), counted (`half`: the
    /// last pass left a minute half folded); says whether this one did.
    fn fold_pass(&self, agg: &mut Aggregates, half: bool) -> bool {
        let started = Instant::now();
        let folded = agg.fold_ended(self.now_min.get() - 1, crate::agg::FOLD_SLICE);
        let took = started.elapsed().as_nanos() as u64;
        let a = &self.stats.agg;
        if folded > 0 {
            ShardStats::bump(&a.minutes_folded, folded as u64);
        }
        if folded > 0 || half {
            ShardStats::bump(&a.fold_nanos, took);
            a.fold_max_nanos.fetch_max(took, Ordering::Relaxed);
        }
        ShardStats::bump(&a.fold_slices, std::mem::take(&mut agg.fold_slices));
        agg.folding()
    }

    /// Whether an increment waits in a batch for a peer.
    fn has_pending(&self) -> bool {
        self.senders.is_some() && self.pending.borrow().iter().any(|b| !b.is_empty())
    }

    /// Publishes the memory gauges.
    pub fn publish_memory(&self) {
        let agg = self.agg.borrow();
        let m = agg.memory();
        let s = &self.stats.agg;
        s.cells.store(m.cells, Ordering::Relaxed);
        s.memory_bytes.store(m.bytes, Ordering::Relaxed);
        for (a, v) in s.memory_parts.iter().zip(m.parts) {
            a.store(v, Ordering::Relaxed);
        }
        s.url_cells.store(m.url_cells, Ordering::Relaxed);
        s.url_cell_bytes.store(m.url_cell_bytes, Ordering::Relaxed);
        s.sealed_files.store(m.sealed_files, Ordering::Relaxed);
        s.sealed_bytes.store(m.sealed_bytes, Ordering::Relaxed);
        s.visitors.store(m.visitors, Ordering::Relaxed);
        s.visitor_bytes.store(m.visitor_bytes, Ordering::Relaxed);
        s.dim_overflow.store(m.dim_overflow, Ordering::Relaxed);
        s.stale_incs.store(agg.stale, Ordering::Relaxed);
        let parser = self.parser.borrow();
        let c = parser.cache_counts();
        s.parse_cache_hits.store(c.hits, Ordering::Relaxed);
        s.parse_cache_misses.store(c.misses, Ordering::Relaxed);
        let (predicted, scanned) = parser.template_counts();
        s.parse_keys_predicted.store(predicted, Ordering::Relaxed);
        s.parse_keys_scanned.store(scanned, Ordering::Relaxed);
        s.parse_cache_bytes
            .store(parser.cache_bytes() as u64, Ordering::Relaxed);
    }

    /// Applies what peer `src` sends, until its ring closes.
    pub async fn receive(self: Rc<Self>, src: usize, stream: ConnectedReceiver<RouteMsg>) {
        while let Some(msg) = stream.recv().await {
            match msg {
                RouteMsg::Batch(b) => {
                    // An idle ticker refreshes the minute only every IDLE_TICK.
                    self.settle();
                    self.now_min.set(now_minute());
                    self.agg.borrow_mut().apply_batch(&b, self.now_min.get());
                    ShardStats::add(&self.stats.agg.applied_incs, b.len() as u64);
                    self.note_applied(src, b.upto);
                    self.note_clock(src, b.clock_ms);
                    // Back to its source, to be filled again; never waits (a full ring
                    // frees it here instead).
                    let mut b = b;
                    b.clear();
                    if let Some(senders) = &self.senders {
                        let _ = senders.try_send_to(src, RouteMsg::Spare(b));
                    }
                }
                RouteMsg::Spare(b) => self.keep_spare(src, b),
                RouteMsg::Mark(upto, clock) => {
                    self.note_applied(src, upto);
                    self.note_clock(src, clock);
                }
                RouteMsg::Rebuilt(end) => {
                    self.note_applied(src, end);
                    if let Some(c) = self.caught_up.borrow_mut().get_mut(src) {
                        *c = true;
                    }
                    self.rebuilt_peers.set(self.rebuilt_peers.get() + 1);
                }
            }
        }
    }

    /// Keeps an emptied batch for the next ones to `peer`, up to [`SPARES_PER_PEER`].
    fn keep_spare(&self, peer: usize, b: Batch) {
        if let Some(p) = self.spares.borrow_mut().get_mut(peer) {
            if p.len() < SPARES_PER_PEER {
                p.push(b);
            }
        }
    }

    /// Starts one receiving task per peer.
    pub fn spawn_receivers(self: &Rc<Self>, mut receivers: Receivers<RouteMsg>) {
        for (src, stream) in receivers.streams() {
            glommio::spawn_local(self.clone().receive(src, stream)).detach();
        }
    }

    /// Tells every peer that this shard's replay is complete up to `end` (after everything it
    /// routed), and marks its own.
    async fn announce_rebuilt(&self, end: u64) {
        self.flush(1).await;
        self.replay_done.set(true);
        let clock = self.receive_clock();
        if let Some(c) = self.caught_up.borrow_mut().get_mut(self.me) {
            *c = true;
        }
        if let Some(senders) = &self.senders {
            for peer in (0..self.shards).filter(|&p| p != self.me) {
                let _ = senders.send_to(peer, RouteMsg::Rebuilt(end)).await;
                self.set_marked(peer, end, clock);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::AggConfig;
    use crate::tools::gen::HitGenerator;

    /// `n` generated lines with event times five minutes back, and a receive time of now
    /// (ns).
    fn lines(seed: u64, n: usize) -> (Vec<Vec<u8>>, u64) {
        let now_ms = (now_minute() * 60_000) as u64;
        let mut g = HitGenerator::new(seed, now_ms - 5 * 60_000);
        let lines = (0..n)
            .map(|_| {
                let mut l = Vec::new();
                g.next_line(&mut l);
                l
            })
            .collect();
        (lines, now_ms * 1_000_000)
    }

    /// Inside a gather scope a shard's own increments wait, [`LOCAL_BATCH`] at a time, and
    /// the scope's end (or a checkpoint's read of the applied vector) applies the rest;
    /// outside one each is applied at once. Either way the state is the one the records
    /// build.
    #[test]
    fn gathered_increments_are_applied_when_the_scope_ends() {
        let (lines, recv) = lines(5, 300);
        let router = || {
            Router::new(
                Aggregates::new(AggConfig::default()),
                None,
                Default::default(),
            )
        };
        let hits = |r: &Router| {
            r.agg
                .borrow()
                .totals(now_minute() - 60, now_minute() + 2, None)
                .hits
        };

        let direct = router();
        for l in &lines {
            direct.record(recv, l);
        }
        let all = hits(&direct);
        assert!(all >= 300, "{all}");

        let gathered = router();
        let scope = gathered.gather();
        gathered.record(recv, &lines[0]);
        assert_eq!(hits(&gathered), 0, "waits inside the scope");
        let inner = gathered.gather();
        for l in &lines[1..] {
            gathered.record(recv, l);
        }
        drop(inner);
        let part = hits(&gathered);
        assert!(
            part > 0 && part < all,
            "full batches applied, the rest waits: {part}"
        );
        drop(scope);
        assert_eq!(hits(&gathered), all);
        assert_eq!(
            gathered
                .agg
                .borrow()
                .bucket_lines(crate::agg::Res::Minute, now_minute() - 1),
            direct
                .agg
                .borrow()
                .bucket_lines(crate::agg::Res::Minute, now_minute() - 1)
        );

        // A checkpoint's read of the applied vector applies what waits.
        let checked = router();
        let _scope = checked.gather();
        checked.record(recv, &lines[0]);
        assert_eq!(hits(&checked), 0);
        checked.applied_vector();
        assert!(hits(&checked) > 0);
    }

    /// An owner sends each batch it has applied back to its source, which fills it again:
    /// the next batch to that owner starts with the room of the one before.
    #[test]
    fn an_applied_batch_goes_back_to_its_source_and_is_filled_again() {
        let (lines, recv) = lines(7, 400);
        let m = mesh(2);
        let done = Arc::new(AtomicBool::new(false));
        let joins: Vec<_> = (0..2)
            .map(|shard| {
                let (m, done, lines) = (m.clone(), done.clone(), lines.clone());
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .spawn(move || async move {
                        let (tx, rx) = m.join().await.expect("join the mesh");
                        let router = Router::new(
                            Aggregates::new(AggConfig::default()),
                            Some(tx),
                            Default::default(),
                        );
                        router.spawn_receivers(rx);
                        if shard == 1 {
                            // The owner: applies what comes until the source is done.
                            while !done.load(Ordering::Acquire) {
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                            }
                            return (0, 0);
                        }
                        let spares = |r: &Router| r.spares.borrow()[1].len();
                        for l in &lines {
                            router.record(recv, l);
                        }
                        let first = router.pending.borrow()[1].len();
                        router.flush(1).await;
                        for _ in 0..5000 {
                            if spares(&router) == 1 {
                                break;
                            }
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                        assert_eq!(spares(&router), 1, "the applied batch came back");
                        for l in &lines[..10] {
                            router.record(recv, l);
                        }
                        router.flush(1).await;
                        let room = router.pending.borrow()[1].incs.capacity();
                        done.store(true, Ordering::Release);
                        (first, room)
                    })
                    .expect("spawn a shard")
            })
            .collect();
        let got: Vec<(usize, usize)> = joins
            .into_iter()
            .map(|j| j.join().expect("shard"))
            .collect();
        let (first, room) = got[0];
        assert!(first > 100, "increments for the other shard: {first}");
        assert!(
            room >= first,
            "the spare's room is used again: {room} < {first}"
        );
    }
}
