//! Bytes tested eight at a time, as one little-endian word: the bit tricks (`haszero`,
//! `hasless`) that the JSON scanner's string search (`scan::find_special`) and the profile
//! key's control check (`dims::has_control`) share. Each mask may flag bytes after a true hit
//! (a borrow runs upwards), never before one, so "any flag" and "the lowest flag"
//! (little-endian: the first byte) are exact.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` equal to `b` (see the module doc).
#[inline]
pub(super) fn equal(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * u64::from(b));
    y.wrapping_sub(ONES) & !y & HIGH
}

/// The high bit of each byte of `x` below `n` (at most 0x80; see the module doc).
#[inline]
pub(super) fn below(x: u64, n: u8) -> u64 {
    debug_assert!(n <= 0x80);
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
}
