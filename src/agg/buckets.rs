//! Time buckets: a ring of slots per resolution (minute, hour, day), each slot holding the cells of
//! one bucket, evicted by the wall clock.
//!
//! A tier of width `w` minutes keeps the buckets `now/w - window ..= now/w + future`; bucket
//! `b` lives in slot `b % slots` (slots: a power of two at least window + future + 2), tagged with `b`. Writing a bucket into a slot that holds an
//! older one clears the slot first (the old bucket fell out of the window); a slot that holds a
//! *newer* bucket refuses the write (the event is too old). Reading a slot tagged with another
//! bucket reads nothing. So memory is bounded by the window, eviction needs no scan on the hot
//! path, and a periodic [`Tier::evict_before`] frees the memory of buckets nobody writes.

/// One resolution of the aggregates.
#[derive(Debug)]
pub struct Tier<S> {
    /// Bucket width in minutes.
    pub width: i64,
    slots: Vec<(i64, S)>,
}

impl<S: Default> Tier<S> {
    /// A tier of `width` minutes that keeps `window` buckets back and `future` ahead.
    pub fn new(width: i64, window: i64, future: i64) -> Self {
        // A power of two, so that the slot of a bucket is a mask, not a division.
        let n = ((window + future + 2).max(1) as usize).next_power_of_two();
        Tier {
            width,
            slots: (0..n).map(|_| (i64::MIN, S::default())).collect(),
        }
    }

    fn slot_of(&self, bucket: i64) -> usize {
        (bucket as usize) & (self.slots.len() - 1)
    }

    /// The bucket containing `minute`.
    pub fn bucket_of(&self, minute: i64) -> i64 {
        minute.div_euclid(self.width)
    }

    /// The cells of `bucket` for writing, or None when its slot already holds a newer bucket.
    pub fn get_mut(&mut self, bucket: i64) -> Option<&mut S> {
        let i = self.slot_of(bucket);
        let slot = self.slots.get_mut(i)?;
        if slot.0 == bucket {
            return Some(&mut slot.1);
        }
        if slot.0 > bucket {
            return None;
        }
        *slot = (bucket, S::default());
        Some(&mut slot.1)
    }

    /// The cells of `bucket` for writing when the tier holds it (never taking its slot).
    pub fn get_held_mut(&mut self, bucket: i64) -> Option<&mut S> {
        let i = self.slot_of(bucket);
        self.slots
            .get_mut(i)
            .filter(|s| s.0 == bucket)
            .map(|s| &mut s.1)
    }

    /// The older bucket that writing `bucket` would clear from its slot, if any.
    pub fn displaced_by(&self, bucket: i64) -> Option<i64> {
        self.slots
            .get(self.slot_of(bucket))
            .map(|s| s.0)
            .filter(|&old| old != i64::MIN && old < bucket)
    }

    /// The cells of `bucket`, when the tier holds it.
    pub fn get(&self, bucket: i64) -> Option<&S> {
        self.slots
            .get(self.slot_of(bucket))
            .filter(|s| s.0 == bucket)
            .map(|s| &s.1)
    }

    /// Frees every bucket before `bucket`.
    pub fn evict_before(&mut self, bucket: i64) {
        for slot in &mut self.slots {
            if slot.0 != i64::MIN && slot.0 < bucket {
                *slot = (i64::MIN, S::default());
            }
        }
    }

    /// Every bucket held, with its cells, for writing.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (i64, &mut S)> {
        self.slots
            .iter_mut()
            .filter(|s| s.0 != i64::MIN)
            .map(|s| (s.0, &mut s.1))
    }

    /// Every bucket held, with its cells.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &S)> {
        self.slots
            .iter()
            .filter(|s| s.0 != i64::MIN)
            .map(|s| (s.0, &s.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_evicts_older_and_refuses_too_old() {
        let mut t: Tier<u32> = Tier::new(1, 3, 1); // 6 slots, rounded up to 8
        *t.get_mut(10).unwrap() += 1;
        *t.get_mut(11).unwrap() += 2;
        assert_eq!(t.get(10), Some(&1));
        // 18 maps to 10's slot: 10 is evicted.
        *t.get_mut(18).unwrap() += 5;
        assert_eq!(t.get(10), None);
        assert!(t.get_mut(10).is_none(), "older than the slot's bucket");
        t.evict_before(12);
        assert_eq!(t.get(11), None);
        assert_eq!(t.get(18), Some(&5));
    }
}
