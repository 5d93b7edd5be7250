//! The one binary search of the crate: over a range of offsets (queue offsets, entries in a
//! file) where a property holds up to some point and not after it.

use std::ops::Range;

/// The first offset in `range` for which `holds` is false, `range.end` if it always holds.
/// `holds` must be true for a prefix of the range and false after it.
pub(crate) fn partition_point(range: Range<u64>, mut holds: impl FnMut(u64) -> bool) -> u64 {
    let found: Result<u64, std::convert::Infallible> =
        try_partition_point(range, |at| Ok(holds(at)));
    match found {
        Ok(at) => at,
    }
}

/// [`partition_point`] with a test that can fail; the first error ends the search.
pub(crate) fn try_partition_point<E>(
    range: Range<u64>,
    mut holds: impl FnMut(u64) -> Result<bool, E>,
) -> Result<u64, E> {
    let (mut lo, mut hi) = (range.start, range.end.max(range.start));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if holds(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_offset_where_the_property_stops_holding() {
        for end in 0..20u64 {
            for cut in 0..=end {
                assert_eq!(partition_point(0..end, |at| at < cut), cut);
                assert_eq!(
                    partition_point(3..end.max(3), |at| at < cut.max(3)),
                    cut.max(3)
                );
            }
        }
        assert_eq!(
            try_partition_point(0..10, |at| if at == 5 { Err(at) } else { Ok(true) }),
            Err(5)
        );
    }
}
