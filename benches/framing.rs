//! TCP framing throughput: a 1 MiB stream of realistic nginx lines split into frames, in LF
//! (Vector, Fluent Bit) and octet-counted (rsyslog) framing, decoded in 64 KiB reads as a
//! connection does. Reports lines/s. Run: `cargo bench --bench framing`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pixeld::ingest::framing::{Event, FrameDecoder, Framing};
use pixeld::tools::gen::HitGenerator;

fn stream(octet: bool) -> (Vec<u8>, u64) {
    // fixed-date: framing only splits bytes; a fixed date keeps the stream the same every run.
    let mut g = HitGenerator::new(9, 1_795_311_543_462);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut n = 0;
    while out.len() < 1 << 20 {
        g.next_line(&mut line);
        if octet {
            out.extend_from_slice(format!("{} ", line.len()).as_bytes());
            out.extend_from_slice(&line);
        } else {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        n += 1;
    }
    (out, n)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    for (name, mode, octet) in [
        ("line", Framing::Line, false),
        ("auto-line", Framing::Auto, false),
        ("octet", Framing::Octet, true),
        ("auto-octet", Framing::Auto, true),
    ] {
        let (data, lines) = stream(octet);
        group.throughput(Throughput::Elements(lines));
        group.bench_function(format!("{name}/1MiB"), |b| {
            b.iter(|| {
                let mut dec = FrameDecoder::new(mode, 64 << 10);
                let mut buf: Vec<u8> = Vec::with_capacity(256 << 10);
                let mut frames = 0u64;
                for chunk in data.chunks(64 << 10) {
                    buf.extend_from_slice(chunk);
                    let used = dec.decode(&buf, |e| {
                        if let Event::Frame(f) = e {
                            black_box(f);
                            frames += 1;
                        }
                    });
                    buf.drain(..used);
                }
                assert_eq!(frames, lines);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
