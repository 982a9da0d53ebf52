//! The fuzz targets of `fuzz/` in the normal test suite: every seed of `fuzz/corpus/<target>/`
//! (real nginx lines with and without hostname, RFC 5424, invalid UTF-8, `\u0000`, huge
//! numbers, empty fields; TCP streams with bad octet counts; the sample segment; query strings)
//! and proptest's random and mutated inputs go through the same target bodies
//! (`fuzz/targets.rs`) that `cargo fuzz run <target>` drives for hours. A crash that a fuzzer
//! finds gets its input added to the corpus, so it stays fixed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/targets.rs");

use proptest::prelude::*;

/// A target: its name (its corpus directory) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 5] = [
    ("syslog", syslog),
    ("framing", framing),
    ("event", event),
    ("batch", batch),
    ("query", query),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_of_every_target_passes() {
    for (name, body) in TARGETS {
        let seeds = seeds(name);
        assert!(seeds.len() >= 4, "{name}: only {} seeds", seeds.len());
        for s in &seeds {
            body(s);
        }
    }
}

/// A seed with some of its bytes replaced, removed or repeated — cheap structure-aware fuzzing.
fn mutated(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(at, kind, byte) in edits {
        if v.is_empty() {
            v.push(byte);
            continue;
        }
        let at = at % v.len();
        match kind % 4 {
            0 => v[at] = byte,
            1 => {
                v.remove(at);
            }
            2 => v.insert(at, byte),
            _ => v.truncate(at),
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for (_, body) in TARGETS {
            body(&data);
        }
    }

    #[test]
    fn mutated_seeds_never_panic(
        target in 0..TARGETS.len(),
        pick in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let (name, body) = TARGETS[target];
        let seeds = seeds(name);
        let seed = &seeds[pick % seeds.len()];
        body(&mutated(seed, &edits));
    }
}
