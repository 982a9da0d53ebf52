//! Retention policy: which sealed segments may be deleted.
//!
//! Pure decision logic, separate from the I/O that deletes, so it is easy to test. Only sealed
//! segments are ever candidates, oldest first, and only whole segments: the open segment and
//! anything newer than a kept segment stay.

use std::time::Duration;

use super::index::SegmentSummary;

/// How long and how much a shard keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete a sealed segment once its newest record is older than this (None: keep forever).
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the shard's log is larger than this (None: no limit).
    pub max_bytes: Option<u64>,
}

/// How many of the oldest `sealed` segments (oldest first) to delete, given the open
/// segment's size and the current time in ns.
pub fn segments_to_delete(
    policy: &Retention,
    sealed: &[SegmentSummary],
    open_bytes: u64,
    now_ns: u64,
) -> usize {
    let mut total: u64 = sealed.iter().map(|s| s.segment_len).sum::<u64>() + open_bytes;
    let mut n = 0;
    for s in sealed {
        let too_old = policy.max_age.is_some_and(|age| {
            let cutoff = now_ns.saturating_sub(age.as_nanos() as u64);
            s.max_ts < cutoff
        });
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            break;
        }
        total -= s.segment_len;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(len: u64, max_ts: u64) -> SegmentSummary {
        SegmentSummary {
            segment_len: len,
            max_ts,
            ..SegmentSummary::default()
        }
    }

    #[test]
    fn by_age_and_bytes() {
        let sealed = [seg(100, 10), seg(100, 20), seg(100, 30)];
        let age = Retention {
            max_age: Some(Duration::from_nanos(15)),
            max_bytes: None,
        };
        assert_eq!(segments_to_delete(&age, &sealed, 50, 40), 2);
        assert_eq!(segments_to_delete(&age, &sealed, 50, 20), 0);
        let bytes = Retention {
            max_age: None,
            max_bytes: Some(260),
        };
        assert_eq!(segments_to_delete(&bytes, &sealed, 50, 0), 1);
        // Never more than the sealed ones, even when the open segment alone is too big.
        assert_eq!(segments_to_delete(&bytes, &sealed, 5000, 0), 3);
        let none = Retention {
            max_age: None,
            max_bytes: None,
        };
        assert_eq!(segments_to_delete(&none, &sealed, 50, u64::MAX), 0);
    }
}
