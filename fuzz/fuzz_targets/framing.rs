//! libFuzzer entry for the `framing` target; the body and its invariants are in `../targets.rs`.
#![no_main]

include!("../targets.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| framing(data));
