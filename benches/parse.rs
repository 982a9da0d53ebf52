//! Per-line parsing on realistic nginx lines (HitGenerator): the syslog header alone (what
//! ingest does for every datagram and frame; RFC 3164 as nginx sends it, RFC 5424, bare) and
//! the whole record into an analytics event (`event` group: header, JSON fields, decoding,
//! url normalization; once with 1 000 repeating lines, whose urls and referrers the parser's
//! cache then holds, and once with 40 000 distinct ones, which miss it). Figures are ns per
//! line via `Throughput::Elements`.
//! Run: `cargo bench --bench parse` (or `-- event` for the event group only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pixeld::parse::event::{EventConfig, EventParser};
use pixeld::parse::syslog;
use pixeld::tools::gen::HitGenerator;

fn bench(c: &mut Criterion) {
    // fixed-date: parsing is a pure function of the line (the header's time is parsed, never
    // compared with the clock), and a fixed date keeps the measured bytes the same every run.
    let mut g = HitGenerator::new(7, 1_795_311_543_462);
    let mut body = Vec::new();
    let mut lines3164 = Vec::new();
    let mut lines5424 = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..1000 {
        g.next_line(&mut body);
        let mut l = b"<190>Nov 22 01:39:03 pixel: ".to_vec();
        l.extend_from_slice(&body);
        lines3164.push(l);
        // fixed-date: as above.
        let mut l = b"<190>1 2026-11-22T01:40:00.123Z web-1 nginx - - - ".to_vec();
        l.extend_from_slice(&body);
        lines5424.push(l);
        bare.push(body.clone());
    }
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1000));
    for (name, lines) in [
        ("rfc3164", &lines3164),
        ("rfc5424", &lines5424),
        ("bare", &bare),
    ] {
        group.bench_function(format!("syslog/{name}/1000-lines"), |b| {
            b.iter(|| {
                for l in lines.iter() {
                    let _ = black_box(syslog::parse(black_box(l)));
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1000));
    let mut parser = EventParser::new(EventConfig::default());
    for (name, lines) in [("rfc3164", &lines3164), ("bare", &bare)] {
        // Every generated line must be an event, or the figure would time the error path.
        assert!(lines.iter().all(|l| parser.parse(l).is_ok()));
        group.bench_function(format!("{name}/1000-lines"), |b| {
            b.iter(|| {
                for l in lines.iter() {
                    let _ = black_box(parser.parse(black_box(l)));
                }
            })
        });
    }
    // The url/referrer cache's two sides. Above, 1 000 lines repeat: after the first pass
    // every url and referrer is a hit. Here every line's url and referrer are distinct and
    // there are more of them than the cache has slots, so nearly every lookup is a miss:
    // the cost of a site whose pages never repeat.
    let distinct: Vec<Vec<u8>> = bare
        .iter()
        .cycle()
        .take(40_000)
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(l).unwrap();
            for key in ["url", "urlref"] {
                if let Some(serde_json::Value::String(u)) = v.get_mut(key) {
                    u.push_str(&format!("%2Fd{i}"));
                }
            }
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    assert!(distinct.iter().all(|l| parser.parse(l).is_ok()));
    group.throughput(Throughput::Elements(distinct.len() as u64));
    group.bench_function("bare-distinct-urls/40000-lines", |b| {
        b.iter(|| {
            for l in distinct.iter() {
                let _ = black_box(parser.parse(black_box(l)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
