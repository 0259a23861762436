//! Sets of pages as sorted, disjoint, non-adjacent address ranges: what a link of an
//! incremental chain provides, what it leaves to its parent.

use crate::types::PageRun;
use crate::PAGE_SIZE;

/// Half-open address ranges `[start, end)`, sorted, disjoint and not touching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    ranges: Vec<(u64, u64)>,
}

impl PageSet {
    /// Every address.
    pub fn all() -> PageSet {
        PageSet {
            ranges: vec![(0, u64::MAX)],
        }
    }

    /// The set of any ranges (in any order, overlapping or not; empty ones are dropped).
    pub fn from_ranges(mut r: Vec<(u64, u64)>) -> PageSet {
        r.retain(|&(s, e)| s < e);
        r.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
        for (s, e) in r {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        PageSet { ranges: out }
    }

    /// The pages of `runs` (saturating at the top of the address space).
    pub fn from_runs<'a>(runs: impl IntoIterator<Item = &'a PageRun>) -> PageSet {
        PageSet::from_ranges(
            runs.into_iter()
                .map(|r| {
                    let len = r.pages.saturating_mul(PAGE_SIZE);
                    (r.addr, r.addr.saturating_add(len))
                })
                .collect(),
        )
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes in the set.
    pub fn len_bytes(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e - s).sum()
    }

    /// `self ∩ other`.
    pub fn intersect(&self, other: &PageSet) -> PageSet {
        let (a, b) = (&self.ranges, &other.ranges);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let s = a[i].0.max(b[j].0);
            let e = a[i].1.min(b[j].1);
            if s < e {
                out.push((s, e));
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PageSet::from_ranges(out)
    }

    /// `self ∖ other`.
    pub fn subtract(&self, other: &PageSet) -> PageSet {
        let b = &other.ranges;
        let mut out = Vec::new();
        let mut j = 0;
        for &(s, e) in &self.ranges {
            let mut cur = s;
            while j < b.len() && b[j].1 <= cur {
                j += 1;
            }
            let mut k = j;
            while cur < e && k < b.len() && b[k].0 < e {
                if b[k].0 > cur {
                    out.push((cur, b[k].0));
                }
                cur = cur.max(b[k].1);
                k += 1;
            }
            if cur < e {
                out.push((cur, e));
            }
        }
        PageSet::from_ranges(out)
    }

    /// The parts of `[start, end)` in the set, in address order.
    pub fn clip(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[first..]
            .iter()
            .take_while(move |&&(s, _)| s < end)
            .map(move |&(s, e)| (s.max(start), e.min(end)))
    }

    /// Whether any address of `[start, end)` is in the set.
    pub fn touches(&self, start: u64, end: u64) -> bool {
        self.clip(start, end).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(s: &PageSet) -> Vec<u64> {
        s.ranges().iter().flat_map(|&(a, b)| a..b).collect()
    }

    proptest! {
        #[test]
        fn set_algebra_matches_a_naive_model(
            a in proptest::collection::vec((0u64..200, 0u64..20), 0..12),
            b in proptest::collection::vec((0u64..200, 0u64..20), 0..12),
        ) {
            let mk = |v: &Vec<(u64, u64)>| PageSet::from_ranges(v.iter().map(|&(s, l)| (s, s + l)).collect());
            let (sa, sb) = (mk(&a), mk(&b));
            let ma: std::collections::BTreeSet<u64> = members(&sa).into_iter().collect();
            let mb: std::collections::BTreeSet<u64> = members(&sb).into_iter().collect();
            prop_assert_eq!(members(&sa.intersect(&sb)), ma.intersection(&mb).copied().collect::<Vec<_>>());
            prop_assert_eq!(members(&sa.subtract(&sb)), ma.difference(&mb).copied().collect::<Vec<_>>());
            let clipped: Vec<u64> = sa.clip(50, 120).flat_map(|(s, e)| s..e).collect();
            prop_assert_eq!(clipped, ma.range(50..120).copied().collect::<Vec<_>>());
            for w in sa.ranges().windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        }
    }
}
