//! The checked-in sample segment `tests/data/sample-v1.log` decodes to exactly the records
//! below. If this test fails, the on-disk format changed: bump `FORMAT_VERSION`, keep reading
//! version 1, and add a new sample instead of regenerating this one.
//! (To create the sample the first time: `PIXELD_WRITE_SAMPLE=1 cargo test --test log sample_format`.)

use std::net::SocketAddr;
use std::ops::ControlFlow;

use pixeld::log::format::{BatchBuilder, BatchEncoder, Codec, Source, Transport, FLAG_PARSE_ERROR};
use pixeld::log::reader::{scan_segment, ShardReader, Start};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample-v1.log");
// fixed-date: the checked-in sample is decoded and read without retention or aggregation, so
// its 2026-11-22 receive times never age; scripts/test also runs its test binary (`--test log`)
// with the clock moved.
const T: u64 = 1_795_311_543_462_000_000; // 2026-11-22T01:39:03.462Z

fn expected() -> Vec<(u64, Source, u8, Vec<u8>)> {
    let udp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let tcp: SocketAddr = "[::1]:5515".parse().unwrap();
    let http: SocketAddr = "10.1.2.3:443".parse().unwrap();
    vec![
        (T, Source { transport: Transport::Udp, peer: Some(udp) }, 0,
         // fixed-date: the sample's lines are bytes to compare, never parsed or aggregated.
         br#"<190>Nov 22 01:39:03 pixel: {"ts":"2026-11-22T01:39:03.462+00:00","msec":1795311543.462,"url":"https%3A%2F%2Fm.sportsline.example%2Fnews%2F2026%2F11%2F22%2Fstory-4","urlref":"https%3A%2F%2Fwww.google.com%2F","vid":"2bcc3ed32675a41e","ua":"Mozilla/5.0 \"quoted\" \\backslash\\ tab\there","ip":"127.0.0.1","action":"pageview"}"#.to_vec()),
        (T + 1_000, Source { transport: Transport::Tcp, peer: Some(tcp) }, 0,
         // fixed-date: as above.
         br#"{"msec":1795311543.463,"url":"https://ex.com/a","vid":"v1","action":"hb"}"#.to_vec()),
        (T - 5, Source::IMPORT, 0, Vec::new()),
        (T + 2_000, Source { transport: Transport::Http, peer: Some(http) }, FLAG_PARSE_ERROR,
         b"not json \xff\xfe raw bytes".to_vec()),
    ]
}

fn encode_sample() -> Vec<u8> {
    let recs = expected();
    let mut out = Vec::new();
    // Batch 1 uncompressed (bytes fully specified by this file), batch 2 zstd.
    for (codec, range, base) in [(Codec::None, 0..2, 0u64), (Codec::Zstd, 2..4, 2)] {
        let mut b = BatchBuilder::default();
        for (ts, src, flags, bytes) in &recs[range] {
            b.push(*ts, *src, *flags, bytes);
        }
        BatchEncoder::new(codec, 1)
            .unwrap()
            .encode(&mut b, base, &mut out)
            .unwrap();
    }
    out
}

#[test]
fn checked_in_sample_decodes_exactly() {
    if std::env::var_os("PIXELD_WRITE_SAMPLE").is_some() {
        std::fs::write(SAMPLE, encode_sample()).unwrap();
    }
    let bytes = std::fs::read(SAMPLE).expect("tests/data/sample-v1.log is checked in");
    let scan = scan_segment(&bytes, 0, 4096, true);
    assert!(scan.corrupt.is_empty() && scan.tail.is_none());
    assert_eq!(scan.batches, 2);
    assert_eq!(scan.index.summary.records, 4);
    // The uncompressed first batch is byte-for-byte what the encoder writes today.
    let fresh = encode_sample();
    let first_len = pixeld::log::format::decode_header(&bytes)
        .unwrap()
        .total_len();
    assert_eq!(&fresh[..first_len], &bytes[..first_len]);

    // Read through the same reader replay uses, from the sample laid out as a shard dir.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("shard-000");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(SAMPLE, dir.join("00000000000000000000.log")).unwrap();
    let mut got = Vec::new();
    ShardReader::new(&dir, 4096)
        .read(
            Start::Beginning,
            |r| {
                got.push((r.recv_ts, r.source, r.flags, r.bytes.to_vec()));
                ControlFlow::Continue(())
            },
            |w| panic!("{w:?}"),
        )
        .unwrap();
    assert_eq!(got, expected());
}
