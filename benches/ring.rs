//! Cross-shard transfer: ns per increment through the routing mesh (glommio's SPSC
//! `shared_channel` rings between two executors pinned to two CPUs), in batches of
//! `route::BATCH_INCS`, with the receiver applying every increment to its aggregates
//! (`transfer+apply`) or only taking the batch (`transfer`).
//!
//! Run: `cargo bench --bench ring`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use pixeld::agg::{AggConfig, Aggregates, Batch, IncKind};
use pixeld::route::partition::vid_hash;
use pixeld::route::{now_minute, RouteMsg, BATCH_INCS, RING_BATCHES};

const BATCHES: usize = 500;

fn make_batch(seed: u64) -> Batch {
    let now = now_minute();
    let mut b = Batch::default();
    for i in 0..BATCH_INCS as u64 {
        let j = seed.wrapping_mul(31).wrapping_add(i);
        let url = format!("https://www.example.com/articles/{}", j % 5000);
        let kind = [IncKind::Url, IncKind::Ref, IncKind::Visitor][(j % 3) as usize];
        b.push(
            kind,
            j % 4 != 0,
            now - (j % 30) as i64,
            0,
            "www.example.com",
            &url,
            Some(vid_hash(&j.to_string())),
        );
    }
    b
}

/// Sends `BATCHES` batches from CPU 0 to CPU 1; returns the time from the first send to the
/// last batch handled.
fn run(apply: bool) -> Duration {
    let cpus = pixeld::sys::allowed_cpus();
    let mesh: MeshBuilder<RouteMsg, _> = MeshBuilder::full(2, RING_BATCHES);
    let m2 = mesh.clone();
    let producer = LocalExecutorBuilder::new(Placement::Fixed(cpus[0]))
        .spawn(move || async move {
            let (tx, _rx) = mesh.join().await.expect("join");
            let batches: Vec<Batch> = (0..BATCHES as u64).map(make_batch).collect();
            let peer = 1 - tx.peer_id();
            for b in batches {
                if tx.send_to(peer, RouteMsg::Batch(b)).await.is_err() {
                    break;
                }
            }
            let _ = tx.send_to(peer, RouteMsg::Rebuilt(0)).await;
        })
        .expect("producer");
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(cpus[1 % cpus.len()]))
        .spawn(move || async move {
            let (_tx, mut rx) = m2.join().await.expect("join");
            let mut agg = Aggregates::new(AggConfig::default());
            let now = now_minute();
            let streams = rx.streams();
            let (_, stream) = streams.into_iter().next().expect("one peer");
            let mut started = None;
            while let Some(msg) = stream.recv().await {
                started.get_or_insert_with(Instant::now);
                match msg {
                    RouteMsg::Batch(b) => {
                        if apply {
                            agg.apply_batch(&b, now);
                        }
                    }
                    RouteMsg::Rebuilt(_) => break,
                    RouteMsg::Mark(..) | RouteMsg::Spare(_) => {}
                }
            }
            started.map_or(Duration::ZERO, |s| s.elapsed())
        })
        .expect("consumer");
    producer.join().expect("producer thread");
    consumer.join().expect("consumer thread")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCHES * BATCH_INCS) as u64));
    for (name, apply) in [("transfer", false), ("transfer+apply", true)] {
        group.bench_function(format!("{name}/{}-increments", BATCHES * BATCH_INCS), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(apply)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
