//! The routing mesh under a slow owner: with a one-batch ring and a peer that does not read
//! for a while, the sending shard's `flush` waits (counted in `ring_full_waits`) instead of
//! dropping, and once the peer drains, every increment sent was applied and the two shards'
//! partitions add up to exactly the events routed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers};
use glommio::{LocalExecutorBuilder, Placement};
use pixeld::agg::{AggConfig, Aggregates};
use pixeld::metrics::{AggOutcome, ShardStats};
use pixeld::route::{now_minute, RouteMsg, Router, BATCH_INCS};
use pixeld::tools::gen::HitGenerator;
use std::rc::Rc;

const EVENTS: usize = 20_000;

type Mesh = MeshBuilder<RouteMsg, Full>;

/// Joins `mesh` and makes this executor's router, with an empty state and `stats[me]`; its
/// receivers are the caller's to start.
async fn join(
    mesh: Mesh,
    stats: &[Arc<ShardStats>; 2],
) -> (Rc<Router>, Receivers<RouteMsg>, usize) {
    let (tx, rx) = mesh.join().await.unwrap();
    let me = tx.peer_id();
    let router = Router::new(
        Aggregates::new(AggConfig::default()),
        Some(tx),
        stats[me].clone(),
    );
    (router, rx, me)
}

#[test]
fn a_full_ring_waits_and_loses_nothing() {
    let mesh: Mesh = MeshBuilder::full(2, 1);
    let m2 = mesh.clone();
    let stats = [
        Arc::new(ShardStats::default()),
        Arc::new(ShardStats::default()),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let (s0, d0) = (stats.clone(), done.clone());
    let producer = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (router, rx, me) = join(mesh, &s0).await;
            router.spawn_receivers(rx);
            let now_ms = (now_minute() * 60_000) as u64;
            let mut g = HitGenerator::new(3, now_ms - 20 * 60_000);
            let mut line = Vec::new();
            for i in 0..EVENTS {
                g.next_line(&mut line);
                router.record(now_ms * 1_000_000, &line);
                if i % 64 == 63 {
                    router.flush(BATCH_INCS).await;
                }
            }
            router.flush(1).await;
            d0.store(true, Ordering::SeqCst);
            // Keep receiving (the peer may send to us too) until the peer has applied all.
            let peer = 1 - me;
            while ShardStats::get(&s0[peer].agg.applied_incs)
                < ShardStats::get(&s0[me].agg.sent_incs)
            {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            let a = router.agg.borrow();
            (me, a.totals(now_minute() - 60, now_minute() + 1, None))
        })
        .unwrap();
    let (s1, d1) = (stats.clone(), done.clone());
    let consumer = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (router, rx, me) = join(m2, &s1).await;
            // A slow owner: nothing is read for a while, so the one-batch ring fills.
            glommio::timer::sleep(Duration::from_millis(300)).await;
            router.spawn_receivers(rx);
            let peer = 1 - me;
            while !d1.load(Ordering::SeqCst)
                || ShardStats::get(&s1[me].agg.applied_incs)
                    < ShardStats::get(&s1[peer].agg.sent_incs)
            {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            let a = router.agg.borrow();
            (me, a.totals(now_minute() - 60, now_minute() + 1, None))
        })
        .unwrap();
    let (p, pt) = producer.join().unwrap();
    let (c, ct) = consumer.join().unwrap();
    let (ps, cs) = (&stats[p], &stats[c]);
    assert!(
        ShardStats::get(&ps.agg.ring_full_waits) > 0,
        "the producer never found the ring full"
    );
    assert_eq!(ShardStats::get(&ps.agg.lost_incs), 0);
    assert_eq!(
        ShardStats::get(&ps.agg.sent_incs),
        ShardStats::get(&cs.agg.applied_incs)
    );
    let aggregated = ps.agg.outcome(AggOutcome::Aggregated);
    assert_eq!(
        aggregated + ps.agg.outcome(AggOutcome::OutOfWindow) + ps.agg.outcome(AggOutcome::Unparsed),
        EVENTS as u64
    );
    assert_eq!(
        aggregated, EVENTS as u64,
        "generated hits are all events in the window"
    );
    // Visitor totals are partitioned: the two shards' hits add up to every event.
    assert_eq!(pt.hits + ct.hits, aggregated);
    assert!(ct.hits > 0 && pt.hits > 0, "{pt:?} {ct:?}");
}

/// A quiet mesh's ticker sleeps up to `IDLE_TICK` instead of `FLUSH_EVERY`; the first
/// increment queued for a peer wakes it, and the partial batch is shipped without the ingest
/// loop's flush: every increment made for the peer is applied there.
#[test]
fn an_idle_ticker_is_woken_by_the_first_increment_for_a_peer() {
    let mesh: Mesh = MeshBuilder::full(2, 4);
    let stats = [
        Arc::new(ShardStats::default()),
        Arc::new(ShardStats::default()),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let shard = |mesh: Mesh| {
        let (stats, stop) = (stats.clone(), stop.clone());
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let (router, rx, me) = join(mesh, &stats).await;
                router.spawn_receivers(rx);
                let ticker = glommio::spawn_local(router.clone().tick(stop.clone()));
                // Quiet: nothing pending, so the ticker is asleep in its idle wait.
                glommio::timer::sleep(Duration::from_millis(300)).await;
                if me == 0 {
                    let now_ms = (now_minute() * 60_000) as u64;
                    let mut g = HitGenerator::new(5, now_ms - 5 * 60_000);
                    let mut line = Vec::new();
                    // Never `flush`ed here: only the ticker ships these.
                    for _ in 0..50 {
                        g.next_line(&mut line);
                        router.record(now_ms * 1_000_000, &line);
                    }
                }
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                let peer = 1 - me;
                while !stop.load(Ordering::SeqCst) {
                    let (mine, theirs) = (&stats[me].agg, &stats[peer].agg);
                    let queued = ShardStats::get(&stats[0].agg.queued_incs);
                    if me == 0
                        && queued > 0
                        && ShardStats::get(&mine.sent_incs) == queued
                        && ShardStats::get(&theirs.applied_incs) == queued
                    {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if std::time::Instant::now() > deadline {
                        stop.store(true, Ordering::SeqCst);
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                ticker.await;
            })
            .unwrap()
    };
    let (a, b) = (shard(mesh.clone()), shard(mesh));
    a.join().unwrap();
    b.join().unwrap();
    let (p, c) = (&stats[0].agg, &stats[1].agg);
    let queued = ShardStats::get(&p.queued_incs);
    assert!(queued > 0, "no increment was made for the peer");
    assert_eq!(ShardStats::get(&p.sent_incs), queued, "not all shipped");
    assert_eq!(ShardStats::get(&c.applied_incs), queued, "not all applied");
    assert_eq!(ShardStats::get(&p.lost_incs), 0);
    assert!(ShardStats::get(&p.ticker_idle_waits) > 0);
    assert!(
        ShardStats::get(&p.ticker_woken) >= 1,
        "the queued increment did not wake the idle ticker"
    );
}
