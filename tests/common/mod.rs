//! Helpers shared by the scenario tests: a glommio executor to run log code on, temp dirs on
//! a real filesystem (O_DIRECT needs one), and deterministic record contents.
#![allow(dead_code)]

use std::future::Future;
use std::ops::ControlFlow;
use std::path::Path;

use glommio::{LocalExecutorBuilder, Placement};
use pixeld::log::reader::{ShardReader, Start, Warning};

/// Runs `f` to completion on a fresh glommio executor thread.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A temp dir under the target dir (a real disk, unlike a tmpfs /tmp).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Deterministic contents for record `i` of round `round`, `len` bytes, no LF.
pub fn record_bytes(round: u64, i: u64, len: usize) -> Vec<u8> {
    let head = format!("r{round}-i{i}-");
    let mut v = Vec::with_capacity(len);
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    while v.len() < len {
        if v.len() < head.len() {
            v.push(head.as_bytes()[v.len()]);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(b'a' + (x % 26) as u8);
        }
    }
    v
}

/// A record as tests compare it: (offset, recv_ts, bytes).
pub type Rec = (u64, u64, Vec<u8>);

/// Every readable record, and the warnings.
pub fn read_all(dir: &Path, start: Start) -> (Vec<Rec>, Vec<Warning>) {
    let mut recs = Vec::new();
    let mut warns = Vec::new();
    ShardReader::new(dir, 4096)
        .read(
            start,
            |r| {
                recs.push((r.offset, r.recv_ts, r.bytes.to_vec()));
                ControlFlow::Continue(())
            },
            |w| warns.push(w),
        )
        .expect("read");
    (recs, warns)
}

/// Path of the pixeld binary built for these tests.
pub fn pixeld_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pixeld")
}
