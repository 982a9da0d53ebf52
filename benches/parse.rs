//! Per-line parsing on realistic nginx lines (HitGenerator): the syslog header alone (what
//! ingest does for every datagram and frame; RFC 3164 as nginx sends it, RFC 5424, bare) and
//! the whole record into an analytics event (`event` group: header, JSON fields, decoding,
//! url normalization; once with 1 000 repeating lines, whose urls and referrers the parser's
//! cache then holds, and once with 40 000 distinct ones, which miss it; and `template/…`: the
//! same lines with their keys in order, which the parser's learned template foresees, and
//! rotated by a different amount on each line, which it cannot). Figures are ns per
//! line via `Throughput::Elements`.
//! The `country` group times the same lines with a random public client address each, without
//! a country database and with one: `PIXELD_BENCH_GEO_DB=/path/GeoLite2-Country.mmdb` names a
//! real one; without it the bench writes a synthetic database of 200 000 networks in 250
//! countries (mmdb-writer), whose tree is about as deep as GeoLite2's; `city-database` the same
//! networks with a region each (40 per country, as GeoLite2-City's `subdivisions`), or
//! `PIXELD_BENCH_CITY_DB=/path/GeoLite2-City.mmdb`: the `region` dimension's cost. Two sets of lines:
//! every address distinct (more than the address cache holds), and addresses drawn from
//! 2 500 (readers with several pageviews each). `bot-networks` times them with a list of 5 000
//! bot networks instead (`[geo] bot_networks`: one binary search per line).
//! `custom-events` times the 1 000 lines as custom events (a name, props as the pixel logs
//! them), without and with a `props.KEY` dimension.
//! Run: `cargo bench --bench parse` (or `-- event` for the event group only).
//!
//! Instructions per line, the figure this shared VM cannot blur: `PIXELD_BENCH_LINES=N`
//! makes the binary parse N of the RFC 3164 lines (cycling through the 1 000) and nothing
//! else, so that `cargo bench --bench parse --no-run`, then
//! `PIXELD_BENCH_LINES=2000 valgrind --tool=callgrind target/release/deps/parse-* --bench`
//! and the same with 12000 give the instructions of 10 000 lines as the difference of the two
//! totals (the set-up cancels out).

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
    if let Some(n) = std::env::var("PIXELD_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        // Instruction counts instead of times (see the module doc).
        let mut parser = EventParser::new(EventConfig::default());
        let events = lines3164
            .iter()
            .cycle()
            .take(n)
            .filter(|l| parser.parse(black_box(l)).is_ok())
            .count();
        println!(
            "parsed {n} lines, {events} events, {:?}",
            parser.cache_counts()
        );
        return;
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
    // The learned template's two sides (`parse::event::scan::Template`): the same 1 000
    // lines, written again by serde_json as they are (every key where the template foresees
    // it), and with each line's keys rotated by its number, so that no two lines in a row
    // have the same shape and every key is scanned.
    let (mut same, mut shuffled) = (Vec::new(), Vec::new());
    for (i, l) in bare.iter().enumerate() {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(l).unwrap();
        same.push(serde_json::to_vec(&v).unwrap());
        let mut kv: Vec<_> = v.into_iter().collect();
        let n = kv.len();
        kv.rotate_left(i % n);
        let v: serde_json::Map<String, serde_json::Value> = kv.into_iter().collect();
        shuffled.push(serde_json::to_vec(&v).unwrap());
    }
    for (name, lines) in [
        ("rfc3164", &lines3164),
        ("bare", &bare),
        ("template/keys-in-order", &same),
        ("template/keys-rotated", &shuffled),
    ] {
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
    // Custom events: the same 1 000 lines as `action=event` with a name and props as the
    // pixel logs them (percent-encoded JSON), read by a parser without and with a `props.KEY`
    // dimension (which parses the props): against `bare/1000-lines`, what an event costs.
    let events: Vec<Vec<u8>> = bare
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(l).unwrap();
            let plan = ["free", "pro", "team"][i % 3];
            v.insert("action".into(), "event".into());
            v.insert("name".into(), ["signup", "download"][i % 2].into());
            v.insert(
                "props".into(),
                format!("%7B%22plan%22%3A%22{plan}%22%2C%22seats%22%3A{}%7D", i % 7).into(),
            );
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    let mut with_props = EventParser::new(EventConfig {
        custom: vec![("plan".into(), "props.plan".into())],
        ..EventConfig::default()
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    for (name, p) in [
        ("custom-events/1000-lines", &mut parser),
        ("custom-events-props-dimension/1000-lines", &mut with_props),
    ] {
        assert!(events
            .iter()
            .all(|l| p.parse(l).is_ok_and(|e| !e.bad_props)));
        group.bench_function(name, |b| {
            b.iter(|| {
                for l in events.iter() {
                    let _ = black_box(p.parse(black_box(l)));
                }
            })
        });
    }
    group.finish();
    countries(c, &bare);
}

/// Country lookups: the same lines with random public addresses, without and with a database.
fn countries(c: &mut Criterion, bare: &[Vec<u8>]) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let public_v4 = |rng: &mut rand::rngs::SmallRng| loop {
        let a: u8 = rng.gen_range(1..224);
        if ![10, 100, 127, 169, 172, 192, 198, 203].contains(&a) {
            return std::net::Ipv4Addr::new(a, rng.gen(), rng.gen(), rng.gen());
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // The synthetic databases' networks: the same for countries and cities.
    let nets: Vec<ipnet::Ipv4Net> = (0..200_000u32)
        .map(|_| {
            ipnet::Ipv4Net::new(public_v4(&mut rng), 24)
                .unwrap()
                .trunc()
        })
        .collect();
    let synthetic = |name: &str, city: bool| {
        let mut w = mmdb_writer::Writer::builder(name)
            .description(&[("en", "pixeld's parse bench")])
            .build();
        for (i, net) in nets.iter().enumerate() {
            let i = i as u32;
            let code = format!(
                "{}{}",
                (b'A' + (i % 25) as u8) as char,
                (b'A' + (i / 25 % 10) as u8) as char
            );
            let record = if city {
                serde_json::json!({"country": {"iso_code": code},
                    "subdivisions": [{"iso_code": format!("R{}", i / 250 % 40), "names": {"en": "Region"}}]})
            } else {
                serde_json::json!({"country": {"iso_code": code}})
            };
            let _ = w.insert(*net, &record);
        }
        let path = dir.path().join(format!("{name}.mmdb"));
        std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
        path
    };
    let db = match std::env::var_os("PIXELD_BENCH_GEO_DB") {
        Some(p) => std::path::PathBuf::from(p),
        None => synthetic("Synthetic-Country", false),
    };
    let city_db = match std::env::var_os("PIXELD_BENCH_CITY_DB") {
        Some(p) => std::path::PathBuf::from(p),
        None => synthetic("Synthetic-City", true),
    };
    // 10 000 lines, each with its own address (a fifth IPv6), as many distinct visitors send.
    let lines: Vec<Vec<u8>> = bare
        .iter()
        .cycle()
        .take(10_000)
        .map(|l| {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(l).unwrap();
            let ip = if rng.gen_range(0..5) == 0 {
                std::net::Ipv6Addr::new(
                    0x2a00 + rng.gen_range(0..0x400),
                    rng.gen(),
                    rng.gen(),
                    0,
                    0,
                    0,
                    0,
                    rng.gen(),
                )
                .to_string()
            } else {
                public_v4(&mut rng).to_string()
            };
            v.insert("ip".into(), ip.into());
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    // The same lines with addresses drawn from 2 500 (readers with several pageviews each,
    // whose addresses the per-shard address cache then holds).
    let pool: Vec<String> = (0..2_500)
        .map(|_| public_v4(&mut rng).to_string())
        .collect();
    let repeating: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(l).unwrap();
            let ip = pool[rng.gen_range(0..pool.len())].clone();
            v.insert("ip".into(), ip.into());
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("country");
    group.throughput(Throughput::Elements(lines.len() as u64));
    let geo = pixeld::parse::geo::GeoDb::open(&db);
    assert!(geo.status().loaded.is_some(), "{:?}", geo.status());
    let city = pixeld::parse::geo::GeoDb::open(&city_db);
    assert!(city.status().loaded.is_some(), "{:?}", city.status());
    // A bot networks list as big as a few cloud providers' published ranges: 5 000 networks,
    // /12 to /24, named after 20 providers.
    let list = dir.path().join("bot-networks.txt");
    let text: String = (0..5_000u32)
        .map(|i| {
            let len = rng.gen_range(12..=24);
            let net = ipnet::Ipv4Net::new(public_v4(&mut rng), len)
                .unwrap()
                .trunc();
            format!("{net} Provider{}\n", i % 20)
        })
        .collect();
    std::fs::write(&list, text).unwrap();
    let nets = pixeld::parse::networks::NetworksFile::open(&list);
    assert!(nets.status().loaded.is_some(), "{:?}", nets.status());
    for (name, cfg) in [
        ("no-database", EventConfig::default()),
        (
            "bot-networks",
            EventConfig {
                bot_networks: pixeld::parse::networks::BotNetworks::new(nets.clone()),
                ..EventConfig::default()
            },
        ),
        (
            "database",
            EventConfig {
                geo: pixeld::parse::geo::Geo::new(geo.clone()),
                ..EventConfig::default()
            },
        ),
        (
            "city-database",
            EventConfig {
                geo: pixeld::parse::geo::Geo::new(city.clone()),
                ..EventConfig::default()
            },
        ),
    ] {
        let mut parser = EventParser::new(cfg);
        for (set, lines) in [("10000-addresses", &lines), ("2500-repeating", &repeating)] {
            assert!(lines.iter().all(|l| parser.parse(l).is_ok()));
            group.bench_function(format!("{name}/{set}"), |b| {
                b.iter(|| {
                    for l in lines.iter() {
                        let _ = black_box(parser.parse(black_box(l)));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
