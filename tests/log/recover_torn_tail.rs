//! Torn tails: cut the newest segment at every byte offset inside its last batch, and flip
//! bytes in it; recovery must keep exactly the complete batches before it, say what it cut,
//! and appending must resume at the right offset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pixeld::log::format::{decode_header, segment_file_name};
use pixeld::log::reader::Start;
use pixeld::log::{Fsync, Log, LogConfig, Source};
use pixeld::metrics::ShardStats;

use crate::common;

fn config(dir: &Path) -> LogConfig {
    let mut cfg = LogConfig::new(dir, 0);
    cfg.fsync = Fsync::EveryBatch;
    cfg
}

/// Writes `batches` batches of `per_batch` records each, one batch per durable wait.
async fn write_batches(dir: PathBuf, batches: u64, per_batch: u64, t0: u64) {
    let (log, flusher, _) = Log::open(config(&dir), Arc::new(ShardStats::default()))
        .await
        .unwrap();
    let flusher = glommio::spawn_local(flusher.run());
    for b in 0..batches {
        for j in 0..per_batch {
            let i = b * per_batch + j;
            log.append(
                t0 + i,
                Source::IMPORT,
                0,
                &common::record_bytes(1, i, 20 + (i % 13) as usize),
            )
            .unwrap();
        }
        log.wait_durable(log.next_offset() - 1).await.unwrap();
    }
    log.close();
    flusher.await.unwrap();
    // These tests play crashes by editing the files afterwards; a crash leaves no
    // clean-shutdown marker (and one would rightly make recovery trust the segment).
    std::fs::remove_file(dir.join(pixeld::log::segment::CLEAN_MARKER)).unwrap();
}

/// Start positions of the batches in a segment file.
fn batch_positions(bytes: &[u8]) -> Vec<usize> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let h = decode_header(&bytes[pos..]).unwrap();
        out.push(pos);
        pos += h.total_len();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn every_cut_and_flip_in_the_last_batch_recovers_the_complete_batches() {
    let tmp = common::tempdir();
    let pristine = tmp.path().join("pristine");
    let (batches, per_batch) = (4u64, 5u64);
    {
        let d = pristine.clone();
        let t0 = pixeld::sys::now_ns();
        common::run(move || write_batches(d, batches, per_batch, t0));
    }
    let seg_name = segment_file_name(0);
    let bytes = std::fs::read(pristine.join(&seg_name)).unwrap();
    let starts = batch_positions(&bytes);
    assert_eq!(starts.len() as u64, batches);
    let last = *starts.last().unwrap();
    let kept = (batches - 1) * per_batch;

    // Every cut inside the last batch, and a set of flips at every position of it.
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in last..bytes.len() {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    for pos in last..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0x5a;
        cases.push((format!("flip at {pos}"), b));
    }
    // Zeroes over the whole last batch (a torn write of a new block).
    let mut z = bytes.clone();
    z[last..].fill(0);
    cases.push(("zeroed last batch".into(), z));
    let n_cases = cases.len();
    let work = tmp.path().join("work");
    let results = common::run(move || async move {
        let mut failures = Vec::new();
        for (name, content) in cases {
            let _ = std::fs::remove_dir_all(&work);
            copy_dir(&pristine, &work);
            std::fs::write(work.join(segment_file_name(0)), &content).unwrap();
            let stats = Arc::new(ShardStats::default());
            let (log, flusher, report) = Log::open(config(&work), stats.clone()).await.unwrap();
            if report.next_offset != kept {
                failures.push(format!(
                    "{name}: next offset {} != {kept}",
                    report.next_offset
                ));
            }
            let cut_bytes = content.len() as u64 - last as u64;
            if report.truncated_bytes + report.trimmed_padding != cut_bytes {
                failures.push(format!(
                    "{name}: reported {} bytes cut (+{} padding), expected {cut_bytes}",
                    report.truncated_bytes, report.trimmed_padding
                ));
            }
            let flusher = glommio::spawn_local(flusher.run());
            let off = log
                .append(pixeld::sys::now_ns(), Source::IMPORT, 0, b"resumed")
                .unwrap();
            if off != kept {
                failures.push(format!("{name}: resumed at offset {off}, expected {kept}"));
            }
            log.close();
            flusher.await.unwrap();
            let (recs, warns) = common::read_all(&work, Start::Beginning);
            if !warns.is_empty() || recs.len() as u64 != kept + 1 {
                failures.push(format!(
                    "{name}: read back {} records, warnings {warns:?}",
                    recs.len()
                ));
                continue;
            }
            for (i, (o, _, b)) in recs.iter().enumerate().take(kept as usize) {
                let want = common::record_bytes(1, i as u64, 20 + (i % 13));
                if *o != i as u64 || *b != want {
                    failures.push(format!("{name}: record {i} differs"));
                    break;
                }
            }
            if recs[kept as usize].2 != b"resumed" {
                failures.push(format!("{name}: appended record differs"));
            }
        }
        failures
    });
    assert!(
        results.is_empty(),
        "{} of {n_cases} cases failed:\n{}",
        results.len(),
        results.join("\n")
    );
}

#[test]
fn zero_padding_after_a_crash_is_trimmed_silently_and_data_kept() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("s");
    {
        let d = dir.clone();
        let t0 = pixeld::sys::now_ns();
        common::run(move || write_batches(d, 3, 4, t0));
    }
    let path = dir.join(segment_file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // What an O_DIRECT write leaves when the process dies before the clean close.
    bytes.resize(len.div_ceil(4096) * 4096, 0);
    std::fs::write(&path, &bytes).unwrap();
    let d = dir.clone();
    let report = common::run(move || async move {
        let (log, flusher, report) = Log::open(config(&d), Arc::new(ShardStats::default()))
            .await
            .unwrap();
        let f = glommio::spawn_local(flusher.run());
        log.close();
        f.await.unwrap();
        report
    });
    assert_eq!(report.next_offset, 12);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.trimmed_padding as usize, bytes.len() - len);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, len);
}

#[test]
fn a_clean_shutdown_marker_skips_the_scan_and_agrees_with_it() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("shard-000");
    // Receive times near now: the default retention (7 days) is judged against the clock, and
    // a fixed date here was deleted by the flusher a week after the test was written.
    let t0 = pixeld::sys::now_ns();
    let d = dir.clone();
    common::run(move || write_batches(d, 7, 40, t0));
    // Close again cleanly (write_batches removed its marker): open, append, close.
    let open_append_close = |dir: PathBuf, from: u64| {
        common::run(move || async move {
            let (log, flusher, report) = Log::open(config(&dir), Arc::new(ShardStats::default()))
                .await
                .unwrap();
            let flusher = glommio::spawn_local(flusher.run());
            for i in from..from + 25 {
                log.append(t0 + i, Source::IMPORT, 0, &common::record_bytes(2, i, 30))
                    .unwrap();
            }
            log.close();
            flusher.await.unwrap();
            report
        })
    };
    let first = open_append_close(dir.clone(), 280);
    assert!(!first.clean_start, "no marker: scanned");
    assert!(dir.join(pixeld::log::segment::CLEAN_MARKER).is_file());
    // A copy without the marker recovers by scanning; both must agree on everything.
    let scanned_dir = tmp.path().join("scanned");
    copy_dir(&dir, &scanned_dir);
    std::fs::remove_file(scanned_dir.join(pixeld::log::segment::CLEAN_MARKER)).unwrap();
    let clean = open_append_close(dir.clone(), 305);
    let scanned = open_append_close(scanned_dir.clone(), 305);
    assert!(clean.clean_start && !scanned.clean_start);
    assert_eq!(
        (
            clean.records,
            clean.next_offset,
            clean.bytes,
            clean.truncated_bytes
        ),
        (
            scanned.records,
            scanned.next_offset,
            scanned.bytes,
            scanned.truncated_bytes
        )
    );
    assert_eq!(clean.next_offset, 305);
    // After appending on top of the trusted index, both logs read back the same 330 records,
    // by offset and by time through the index.
    let (a, wa) = common::read_all(&dir, Start::Beginning);
    let (b, wb) = common::read_all(&scanned_dir, Start::Beginning);
    assert!(wa.is_empty() && wb.is_empty(), "{wa:?} {wb:?}");
    assert_eq!(a.len(), 330);
    assert_eq!(a, b);
    for start in [Start::Offset(290), Start::Time(t0 + 300)] {
        assert_eq!(
            common::read_all(&dir, start).0,
            common::read_all(&scanned_dir, start).0
        );
    }
}
