//! `rebuild-aggregates` on a running server (`POST /v1/admin/rebuild-aggregates`): the range
//! of the store the retained logs determine is recomputed from them and replaces what the
//! owners hold, while ingest and queries go on.
//!
//! The shard that received the request coordinates over the query mesh, in three steps:
//! 1. **Start**: every owner records, from now on, each increment it applies into a side state
//!    (`Aggregates::recording`), and reports its applied-offset vector — the frontier up to
//!    which its state holds the logs. Both happen at once on the owner's executor, so the
//!    state is exactly "the records below the frontier, then the recorded ones". An owner
//!    still catching up refuses, and the rebuild is called off.
//! 2. **Recompute**: on glommio's blocking pool, every owner's state from the records below its
//!    frontier (`route::recompute`, the server's own `route::increments`), reading each log
//!    once for all owners.
//! 3. **Apply**: every owner replaces its minute and hour buckets inside the range (those the
//!    logs fully determine; `Aggregates::replace_range`, as the offline tool does) with the
//!    recomputed ones plus what it recorded meanwhile, and stops recording. It first waits
//!    until no checkpoint is sealing (a file being written for an hour it would replace).
//!    The replaced buckets are dirty: the next checkpoint makes them durable.
//!
//! One rebuild at a time per coordinating shard; a second is refused (409). A failed step
//! calls the others off: every owner stops recording, nothing is replaced.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Hub, Part, QueryError, QueryMsg};
use crate::agg::Aggregates;

/// What a shard needs for a live rebuild, set at start (`Hub::set_rebuild`).
pub struct Setup {
    pub data_dir: PathBuf,
    /// The owner's applied-offset vector, or None while it is still catching up.
    pub frontier: Box<dyn Fn() -> Option<Vec<u64>>>,
    /// Every source shard's stats, whose durable offsets the recompute waits for (records
    /// still in a log's write-behind are not in its files yet).
    pub all_stats: Arc<Vec<Arc<crate::metrics::ShardStats>>>,
}

/// One step sent to the other shards.
#[derive(Debug)]
pub enum Step {
    Start,
    Apply(Arc<Job>),
    Cancel,
}

/// What every owner replaces: its recomputed state (`expected[owner]`), the range (minutes)
/// and the minute it was computed at.
#[derive(Debug)]
pub struct Job {
    pub expected: Vec<Aggregates>,
    pub range: (i64, i64),
    pub now: i64,
}

/// What a live rebuild did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub shards: usize,
    pub records: u64,
    pub minute_buckets: u64,
    pub hour_buckets: u64,
    /// The first minute the retained logs fully determine (RFC 3339); buckets before it were
    /// kept as they were.
    pub from: String,
    /// Parts of logs that could not be read (their records are missing from the rebuild).
    pub problems: Vec<String>,
}

/// Why a live rebuild did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(
        "a rebuild is already running on this shard; wait for it (its answer says when it is done)"
    )]
    Busy,
    #[error("shard {0} is still catching up on its log after the start; rebuild once the aggregates are complete (/readyz, `aggregates complete` on stderr)")]
    CatchingUp(usize),
    #[error("live rebuilds are not set up on this server")]
    NotSetUp,
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("reading the logs: {0}")]
    Log(String),
    #[error("shard {0}'s log did not make offset {1} durable within {DURABLE_WAIT:?}; try again")]
    NotDurable(usize, u64),
}

/// How long the other shards have to answer a step (applying a large range takes a while).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the recompute waits for the logs to make the frontier durable.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

impl Hub {
    /// Sets up live rebuilds on this shard.
    pub fn set_rebuild(&self, setup: Setup) {
        *self.rebuild.borrow_mut() = Some(setup);
    }

    /// This shard's part of a step.
    pub(super) async fn rebuild_step(&self, step: Step) -> Part {
        match step {
            Step::Start => Part::Frontier(self.me, self.start_recording()),
            Step::Apply(job) => {
                let (m, h) = self.apply_job(&job).await;
                Part::Rebuilt(m, h)
            }
            Step::Cancel => {
                self.agg.borrow_mut().recording = None;
                Part::Rebuilt(0, 0)
            }
        }
    }

    /// Step 1 on this shard: the frontier, and recording from now on (nothing when still
    /// catching up).
    fn start_recording(&self) -> Option<Vec<u64>> {
        let frontier = (self.rebuild.borrow().as_ref()?.frontier)()?;
        let mut agg = self.agg.borrow_mut();
        let during = Aggregates::new(agg.cfg.clone());
        agg.recording = Some(Box::new(during));
        Some(frontier)
    }

    /// Step 3 on this shard.
    async fn apply_job(&self, job: &Job) -> (u64, u64) {
        // A checkpoint sealing an hour of the range would map its file after the replace.
        while self.agg.borrow().is_sealing() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let mut agg = self.agg.borrow_mut();
        let during = agg.recording.take();
        match job.expected.get(self.me) {
            Some(expected) => agg.replace_range(expected, job.range, job.now, during.as_deref()),
            None => (0, 0),
        }
    }

    /// Rebuilds minutes `[from, to)` (None: unbounded) of every owner from the logs, live:
    /// see the module doc.
    pub async fn rebuild(
        &self,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Report, RebuildError> {
        let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
        if lo >= hi {
            return Err(RebuildError::EmptyRange);
        }
        let (data_dir, all_stats) = match self.rebuild.borrow().as_ref() {
            Some(s) => (s.data_dir.clone(), s.all_stats.clone()),
            None => return Err(RebuildError::NotSetUp),
        };
        if self.rebuilding.replace(true) {
            return Err(RebuildError::Busy);
        }
        let result = self.rebuild_inner(data_dir, &all_stats, (lo, hi)).await;
        if result.is_err() {
            // Call it off everywhere: nobody keeps recording.
            let _ = self
                .fan_out(
                    |id, from| QueryMsg::Rebuild {
                        id,
                        from,
                        step: Step::Cancel,
                    },
                    || {
                        self.agg.borrow_mut().recording = None;
                        Vec::new()
                    },
                    STEP_TIMEOUT,
                )
                .await;
        }
        self.rebuilding.set(false);
        result
    }

    async fn rebuild_inner(
        &self,
        data_dir: PathBuf,
        all_stats: &[Arc<crate::metrics::ShardStats>],
        (lo, hi): (i64, i64),
    ) -> Result<Report, RebuildError> {
        let started = self
            .fan_out(
                |id, from| QueryMsg::Rebuild {
                    id,
                    from,
                    step: Step::Start,
                },
                || vec![Part::Frontier(self.me, self.start_recording())],
                STEP_TIMEOUT,
            )
            .await?;
        let mut applied: Vec<Vec<u64>> = vec![Vec::new(); self.shards];
        for part in started.into_iter().flatten() {
            match part {
                Part::Frontier(shard, Some(f)) if shard < self.shards => applied[shard] = f,
                Part::Frontier(shard, None) => return Err(RebuildError::CatchingUp(shard)),
                _ => {}
            }
        }
        // The recompute reads the logs' files: wait until every source holds its frontier
        // there (durable), as a checkpoint does.
        let deadline = std::time::Instant::now() + DURABLE_WAIT;
        for (src, stats) in all_stats.iter().enumerate() {
            let need = applied
                .iter()
                .filter_map(|a| a.get(src))
                .copied()
                .max()
                .unwrap_or(0);
            while need > 0 && stats.durable_offset().is_none_or(|d| d + 1 < need) {
                if std::time::Instant::now() > deadline {
                    return Err(RebuildError::NotDurable(src, need - 1));
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
        let cfg = self.agg.borrow().cfg.clone();
        let now = crate::route::now_minute();
        let rc = glommio::executor()
            .spawn_blocking(move || {
                crate::route::recompute::recompute(&data_dir, &cfg, &applied, now)
            })
            .await
            .map_err(|e| RebuildError::Log(e.to_string()))?;
        let lo = lo.max(rc.from_minute);
        let job = Arc::new(Job {
            expected: rc.expected,
            range: (lo, hi),
            now,
        });
        let mut report = Report {
            shards: self.shards,
            records: rc.records,
            from: super::params::minute_rfc3339(rc.from_minute),
            problems: rc.problems,
            ..Report::default()
        };
        // This shard applies inside `fan_out`'s `local`, which cannot wait: it applies after.
        let applied = self
            .fan_out(
                |id, from| QueryMsg::Rebuild {
                    id,
                    from,
                    step: Step::Apply(job.clone()),
                },
                Vec::new,
                STEP_TIMEOUT,
            )
            .await?;
        let mine = self.apply_job(&job).await;
        for part in applied
            .into_iter()
            .flatten()
            .chain([Part::Rebuilt(mine.0, mine.1)])
        {
            if let Part::Rebuilt(m, h) = part {
                report.minute_buckets += m;
                report.hour_buckets += h;
            }
        }
        Ok(report)
    }
}
