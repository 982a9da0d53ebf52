//! Retention policy: which sealed segments may be deleted.
//!
//! Pure decision logic, separate from the I/O that deletes, so it is easy to test. Only sealed
//! segments are ever candidates, oldest first, and only whole segments: the open segment and
//! anything newer than a kept segment stay.
//!
//! Consumers with `retention_pin` hold segments back: [`RetentionPin`] carries, per shard,
//! the lowest offset such a consumer still has to read (published by `crate::consumers`
//! through an atomic, so the flusher reads it without a lock and the log knows nothing of
//! consumers). A segment holding records at or after that offset is kept past age and
//! `retention_bytes` — up to `retention_bytes_hard`, past which it is deleted anyway and
//! counted, so a stalled consumer cannot fill the disk and stop ingest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// The lowest offset of one shard that a pinned consumer has not read yet, shared between the
/// consumer store (writer, any thread) and the shard's flusher (reader). Cloning shares it.
#[derive(Debug, Clone)]
pub struct RetentionPin(Arc<AtomicU64>);

impl Default for RetentionPin {
    /// No pin: retention deletes by age and size alone.
    fn default() -> Self {
        RetentionPin(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl RetentionPin {
    /// The first offset still needed, if a pinned consumer needs anything.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            u64::MAX => None,
            o => Some(o),
        }
    }
    pub fn set(&self, floor: Option<u64>) {
        let v = floor.map_or(u64::MAX, |o| o.min(u64::MAX - 1));
        self.0.store(v, Ordering::Release);
    }
}

/// What retention decided for a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deletion {
    /// How many of the oldest sealed segments to delete.
    pub segments: usize,
    /// How many of those a pinned consumer had not read (deleted because the log was over
    /// `retention_bytes_hard`).
    pub unread_by_pinned: usize,
}

/// How many of the oldest `sealed` segments (oldest first) to delete, given the open
/// segment's size and the current time in ns.
pub fn segments_to_delete(
    policy: &Retention,
    sealed: &[SegmentSummary],
    open_bytes: u64,
    now_ns: u64,
) -> usize {
    segments_to_delete_pinned(policy, sealed, open_bytes, now_ns, None, None).segments
}

/// [`segments_to_delete`] with a pin: a segment holding offsets at or after `pin` is kept
/// unless the log is larger than `hard_max_bytes`.
pub fn segments_to_delete_pinned(
    policy: &Retention,
    sealed: &[SegmentSummary],
    open_bytes: u64,
    now_ns: u64,
    pin: Option<u64>,
    hard_max_bytes: Option<u64>,
) -> Deletion {
    let mut total: u64 = sealed.iter().map(|s| s.segment_len).sum::<u64>() + open_bytes;
    let mut d = Deletion::default();
    for s in sealed {
        let too_old = policy.max_age.is_some_and(|age| {
            let cutoff = now_ns.saturating_sub(age.as_nanos() as u64);
            s.max_ts < cutoff
        });
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            break;
        }
        let unread = pin.is_some_and(|p| s.next_offset > p);
        if unread {
            if hard_max_bytes.is_none_or(|hard| total <= hard) {
                break;
            }
            d.unread_by_pinned += 1;
        }
        total -= s.segment_len;
        d.segments += 1;
    }
    d
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

    fn seg_at(base: u64, next: u64, len: u64) -> SegmentSummary {
        SegmentSummary {
            base_offset: base,
            next_offset: next,
            segment_len: len,
            ..SegmentSummary::default()
        }
    }

    #[test]
    fn pinned_segments_are_kept_up_to_the_hard_limit() {
        let sealed = [seg_at(0, 10, 100), seg_at(10, 20, 100), seg_at(20, 30, 100)];
        let bytes = Retention {
            max_age: None,
            max_bytes: Some(150),
        };
        // Unpinned: 350 bytes with the open one, limit 150: the two oldest go.
        assert_eq!(
            segments_to_delete_pinned(&bytes, &sealed, 50, 0, None, None).segments,
            2
        );
        // A consumer at offset 10 has read the first segment only.
        let d = segments_to_delete_pinned(&bytes, &sealed, 50, 0, Some(10), None);
        assert_eq!(
            d,
            Deletion {
                segments: 1,
                unread_by_pinned: 0
            }
        );
        // At offset 15 it is inside the second: that one stays.
        let d = segments_to_delete_pinned(&bytes, &sealed, 50, 0, Some(15), None);
        assert_eq!(d.segments, 1);
        // Offset 0: nothing read; the hard limit (260) lets one unread segment go.
        let d = segments_to_delete_pinned(&bytes, &sealed, 50, 0, Some(0), Some(260));
        assert_eq!(
            d,
            Deletion {
                segments: 1,
                unread_by_pinned: 1
            }
        );
        // The pin never keeps what age and size would keep anyway.
        let d = segments_to_delete_pinned(&bytes, &sealed, 0, 0, Some(0), Some(0));
        assert_eq!(
            d,
            Deletion {
                segments: 2,
                unread_by_pinned: 2
            }
        );
        let pin = RetentionPin::default();
        assert_eq!(pin.get(), None);
        pin.clone().set(Some(7));
        assert_eq!(pin.get(), Some(7));
        pin.set(None);
        assert_eq!(pin.get(), None);
    }
}
