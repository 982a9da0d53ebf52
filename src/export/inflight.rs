//! Per-shard bookkeeping of records handed to the Kafka producer: which are still in flight,
//! which the broker confirmed, and the export offset — the lowest offset not yet confirmed,
//! below which every record is delivered.
//!
//! Deliveries complete out of order (a topic has partitions, each with its own broker
//! connection), so the export offset is a watermark over a queue of produced records in
//! offset order: it moves only when the oldest outstanding record is confirmed. A failed
//! delivery leaves its record unconfirmed, which holds the watermark there until the shard
//! rewinds and produces from it again. Pure logic, no I/O: the exporter (`super::kafka`) owns
//! one per shard on its own thread.

use std::collections::VecDeque;

/// Where a produced record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Confirmed,
    Failed,
}

/// Produced records of one shard, in offset order.
#[derive(Debug)]
pub struct Inflight {
    /// (offset, state) of every produced record at or after the watermark.
    entries: VecDeque<(u64, State)>,
    /// Sequence number of `entries[0]`; a record's sequence number identifies its delivery
    /// report (offsets alone could repeat after a rewind).
    front_seq: u64,
    /// The next offset to read from the log.
    read_end: u64,
    /// Produced records whose delivery report has not come yet.
    outstanding: usize,
}

impl Inflight {
    /// Nothing in flight; reading starts at `start`.
    pub fn new(start: u64) -> Self {
        Inflight {
            entries: VecDeque::new(),
            front_seq: 0,
            read_end: start,
            outstanding: 0,
        }
    }

    /// The next offset to read.
    pub fn read_end(&self) -> u64 {
        self.read_end
    }

    /// Records produced whose delivery report has not come yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Every record below this offset is confirmed by the broker: the export offset.
    pub fn watermark(&self) -> u64 {
        self.entries.front().map_or(self.read_end, |&(o, _)| o)
    }

    /// The sequence number the next [`push`](Self::push) will return (to tag the message
    /// before it is handed to the producer).
    pub fn next_seq(&self) -> u64 {
        self.front_seq + self.entries.len() as u64
    }

    /// Records `offset` as produced and returns its sequence number. Offsets are increasing;
    /// a gap (records the log could not return) is skipped by the read position.
    pub fn push(&mut self, offset: u64) -> u64 {
        debug_assert!(offset >= self.read_end);
        let seq = self.front_seq + self.entries.len() as u64;
        self.entries.push_back((offset, State::InFlight));
        self.read_end = offset + 1;
        self.outstanding += 1;
        seq
    }

    /// Moves the read position forward to `offset` without producing (records deleted by
    /// retention, or a read that ended past unreadable records).
    pub fn skip_to(&mut self, offset: u64) {
        self.read_end = self.read_end.max(offset);
    }

    /// The broker confirmed record `seq`. Returns false for a report that does not belong to
    /// this queue (from before a rewind).
    pub fn confirm(&mut self, seq: u64) -> bool {
        let Some(i) = self.index(seq) else {
            return false;
        };
        if self.entries[i].1 != State::InFlight {
            return false;
        }
        self.entries[i].1 = State::Confirmed;
        self.outstanding -= 1;
        while self
            .entries
            .front()
            .is_some_and(|&(_, s)| s == State::Confirmed)
        {
            self.entries.pop_front();
            self.front_seq += 1;
        }
        true
    }

    /// Delivery of record `seq` failed: it stays unconfirmed (holding the watermark) and is
    /// no longer outstanding. Returns false for a report that does not belong to this queue.
    pub fn fail(&mut self, seq: u64) -> bool {
        match self.index(seq) {
            Some(i) if self.entries[i].1 == State::InFlight => {
                self.entries[i].1 = State::Failed;
                self.outstanding -= 1;
                true
            }
            _ => false,
        }
    }

    /// Forgets everything produced and moves the read position back to the watermark, so that
    /// every unconfirmed record is produced again. Returns the new read position. Reports for
    /// the forgotten records are ignored from now on.
    pub fn rewind(&mut self) -> u64 {
        let w = self.watermark();
        self.front_seq += self.entries.len() as u64;
        self.entries.clear();
        self.read_end = w;
        self.outstanding = 0;
        w
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let i = seq.checked_sub(self.front_seq)? as usize;
        (i < self.entries.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_waits_for_the_oldest() {
        let mut f = Inflight::new(10);
        assert_eq!(f.watermark(), 10);
        let a = f.push(10);
        let b = f.push(11);
        f.skip_to(20); // records 12..20 unreadable
        let c = f.push(20);
        assert_eq!((f.read_end(), f.outstanding()), (21, 3));
        assert!(f.confirm(b));
        assert_eq!(f.watermark(), 10);
        assert!(f.confirm(a));
        assert_eq!(f.watermark(), 20);
        assert!(!f.confirm(a), "a second report is ignored");
        assert!(f.confirm(c));
        assert_eq!((f.watermark(), f.outstanding()), (21, 0));
    }

    #[test]
    fn a_failure_holds_the_watermark_until_a_rewind() {
        let mut f = Inflight::new(0);
        let seqs: Vec<u64> = (0..5).map(|o| f.push(o)).collect();
        assert!(f.confirm(seqs[0]));
        assert!(f.fail(seqs[1]));
        for &s in &seqs[2..] {
            assert!(f.confirm(s));
        }
        assert_eq!((f.watermark(), f.outstanding()), (1, 0));
        assert_eq!(f.rewind(), 1);
        assert_eq!((f.read_end(), f.watermark()), (1, 1));
        assert!(
            !f.confirm(seqs[1]),
            "reports from before the rewind are ignored"
        );
        let again = f.push(1);
        assert!(again > seqs[4]);
        assert!(f.confirm(again));
        assert_eq!(f.watermark(), 2);
    }

    proptest! {
        /// Whatever the order of reports, the watermark is the lowest offset not confirmed,
        /// and every record below it was confirmed.
        #[test]
        fn watermark_is_lowest_unconfirmed(
            n in 1usize..60,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..80),
            fails in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut f = Inflight::new(100);
            let seqs: Vec<u64> = (0..n).map(|i| f.push(100 + 2 * i as u64)).collect();
            let mut confirmed = vec![false; n];
            for ix in order {
                let i = ix.index(n);
                if fails[i] {
                    f.fail(seqs[i]);
                } else if f.confirm(seqs[i]) {
                    confirmed[i] = true;
                }
            }
            let expect = confirmed
                .iter()
                .position(|c| !c)
                .map_or(f.read_end(), |i| 100 + 2 * i as u64);
            prop_assert_eq!(f.watermark(), expect);
        }
    }
}
