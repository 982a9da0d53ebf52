//! What the aggregates' memory is spent on ([`MemPart`]), and what a hashbrown table really
//! holds, for the memory gauges (`pixeld_agg_memory_bytes` and its parts,
//! `pixeld_agg_visitor_bytes`): `capacity()` is what fits before the next doubling, but the
//! table allocates a power of two of buckets — 8/7 of that capacity and up — each with its
//! slot and a control byte, and a group of trailing control bytes. Counting `capacity()` slots
//! alone, as the gauges did before, said up to an eighth less than the heap held.

/// What the aggregates' heap bytes are spent on (`pixeld_agg_memory_part_bytes{part}`; the
/// parts add up to `pixeld_agg_memory_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemPart {
    /// Url cells: their tables.
    UrlCells,
    /// Url cells' visitors beyond the one held inline: lists, sets and sketches.
    UrlVisitors,
    /// Profile cells (pageviews by every dimension), with their visitors.
    Profiles,
    /// Url × channel and url × referrer cells.
    UrlPairs,
    /// Referrer cells per site, entry and exit page cells, visits by entry profile.
    RefsPagesVisits,
    /// Site cells and the all-sites cell, with their unique visitors.
    Sites,
    /// Interned names (urls, sites, referrers, profiles) and their lookup tables.
    Names,
    /// The visits in progress (`agg::visits`).
    Visits,
    /// Buckets themselves, the state of minutes folded in slices, the url → site ids.
    Other,
}

impl MemPart {
    pub const ALL: [MemPart; 9] = [
        MemPart::UrlCells,
        MemPart::UrlVisitors,
        MemPart::Profiles,
        MemPart::UrlPairs,
        MemPart::RefsPagesVisits,
        MemPart::Sites,
        MemPart::Names,
        MemPart::Visits,
        MemPart::Other,
    ];

    /// Its `part` label.
    pub fn as_str(self) -> &'static str {
        match self {
            MemPart::UrlCells => "url_cells",
            MemPart::UrlVisitors => "url_visitors",
            MemPart::Profiles => "profiles",
            MemPart::UrlPairs => "url_pairs",
            MemPart::RefsPagesVisits => "refs_pages_visits",
            MemPart::Sites => "sites",
            MemPart::Names => "names",
            MemPart::Visits => "visits",
            MemPart::Other => "other",
        }
    }
}

/// Heap bytes of a hashbrown table whose `capacity()` is `capacity`, with slots of `slot`
/// bytes (`size_of::<(K, V)>()`, or `size_of::<K>()` for a set).
pub fn table_bytes(capacity: usize, slot: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    // hashbrown: 4 or 8 buckets below 8, else the next power of two of capacity × 8/7.
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (slot + 1) + GROUP_WIDTH
}

/// The trailing control bytes (hashbrown's group width with SSE2).
const GROUP_WIDTH: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_buckets_hashbrown_allocates() {
        for n in [1usize, 3, 7, 8, 14, 15, 100, 1000, 100_000] {
            let mut m: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
            m.extend((0..n as u64).map(|i| (i, i)));
            let cap = m.capacity();
            let buckets = (table_bytes(cap, 16) - GROUP_WIDTH) / 17;
            assert!(
                buckets.is_power_of_two() && buckets > cap,
                "{n}: {cap} → {buckets}"
            );
            assert_eq!(
                cap,
                if buckets < 8 {
                    buckets - 1
                } else {
                    buckets / 8 * 7
                },
                "{n}"
            );
        }
        assert_eq!(table_bytes(0, 16), 0);
    }
}
