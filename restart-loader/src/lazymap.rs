//! Where a lazy restart's missing pages are now, and where they come from. Pure
//! bookkeeping, no syscalls: the helper ([`crate::lazy`]) applies the program's events
//! (mremap, munmap, MADV_DONTNEED, fork) to it and asks it what a faulting page should hold.

use forkpoint_image::{Metadata, PAGE_SIZE};

/// A piece of a registered region: `start..end` in the program now, holding the pages
/// the image has for `orig..` (`zero`: discarded since, so it reads as zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub orig: u64,
    pub zero: bool,
}

/// One process's registered memory (the restored program, or a child it forked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// Sorted by `start`, disjoint.
    pub segments: Vec<Segment>,
    /// Per chunk: already copied into this process.
    pub done: Vec<bool>,
}

/// A page-run of the image: target address, length in pages, chunk, page offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub addr: u64,
    pub pages: u64,
    pub chunk: usize,
    pub page_in_chunk: u64,
}

/// The runs of the lazy chunks, sorted by address.
pub fn sources(meta: &Metadata, lazy: &[bool]) -> Vec<Source> {
    let mut out = Vec::new();
    for (i, c) in meta.chunks.iter().enumerate() {
        if !lazy.get(i).copied().unwrap_or(false) {
            continue;
        }
        let mut at = 0;
        for r in &c.runs {
            out.push(Source {
                addr: r.addr,
                pages: r.pages,
                chunk: i,
                page_in_chunk: at,
            });
            at += r.pages;
        }
    }
    out.sort_unstable_by_key(|s| s.addr);
    out
}

/// The chunk holding the image's page at `addr` (a target address), if a lazy one does.
pub fn chunk_at(sources: &[Source], addr: u64) -> Option<usize> {
    let i = sources.partition_point(|s| s.addr <= addr).checked_sub(1)?;
    let s = sources[i];
    (addr < s.addr + s.pages * PAGE_SIZE).then_some(s.chunk)
}

/// Where the image's page at `addr` is in its (decompressed) chunk: the byte offset.
pub fn offset_in_chunk(sources: &[Source], addr: u64) -> Option<u64> {
    let i = sources.partition_point(|s| s.addr <= addr).checked_sub(1)?;
    let s = sources[i];
    let page = (addr - s.addr) / PAGE_SIZE;
    (page < s.pages).then(|| (s.page_in_chunk + page) * PAGE_SIZE)
}

/// What a fault at a page should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAnswer {
    /// The chunk, decompressed and copied in whole.
    Chunk(usize),
    /// A zero page: stored nowhere, discarded, or already copied and discarded since.
    Zero,
}

impl Space {
    pub fn new(regions: &[(u64, u64)], chunks: usize) -> Space {
        Space {
            segments: regions
                .iter()
                .map(|&(start, end)| Segment {
                    start,
                    end,
                    orig: start,
                    zero: false,
                })
                .collect(),
            done: vec![false; chunks],
        }
    }

    /// The image address of the program's page at `addr`, unless it reads as zero.
    pub fn orig_of(&self, addr: u64) -> Option<u64> {
        let i = self
            .segments
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let s = self.segments[i];
        (addr < s.end && !s.zero).then(|| s.orig + (addr - s.start))
    }

    pub fn answer(&self, sources: &[Source], addr: u64) -> FaultAnswer {
        let page = addr & !(PAGE_SIZE - 1);
        match self.orig_of(page).and_then(|o| chunk_at(sources, o)) {
            Some(c) if !self.done[c] => FaultAnswer::Chunk(c),
            _ => FaultAnswer::Zero,
        }
    }

    /// Splits segments at `start` and `end`, and returns the indexes of those inside.
    fn carve(&mut self, start: u64, end: u64) -> std::ops::Range<usize> {
        for at in [start, end] {
            if let Some(i) = self
                .segments
                .iter()
                .position(|s| s.start < at && at < s.end)
            {
                let s = self.segments[i];
                let (a, b) = (
                    Segment { end: at, ..s },
                    Segment {
                        start: at,
                        orig: s.orig + (at - s.start),
                        ..s
                    },
                );
                self.segments[i] = a;
                self.segments.insert(i + 1, b);
            }
        }
        let lo = self.segments.partition_point(|s| s.start < start);
        let hi = self.segments.partition_point(|s| s.start < end);
        lo..hi
    }

    /// `munmap` (or the shrinking part of an `mremap`): those pages are gone.
    pub fn unmap(&mut self, start: u64, end: u64) {
        let r = self.carve(start, end);
        self.segments.drain(r);
    }

    /// `MADV_DONTNEED` and the like: those pages read as zero from now on.
    pub fn discard(&mut self, start: u64, end: u64) {
        let r = self.carve(start, end);
        for s in &mut self.segments[r] {
            s.zero = true;
        }
    }

    /// `mremap` of `len` bytes from `from` to `to`.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let r = self.carve(from, from + len);
        let moved: Vec<Segment> = self.segments.drain(r).collect();
        self.unmap(to, to + len);
        for s in moved {
            let start = s.start - from + to;
            let seg = Segment {
                start,
                end: start + (s.end - s.start),
                ..s
            };
            let i = self.segments.partition_point(|x| x.start < seg.start);
            self.segments.insert(i, seg);
        }
    }

    /// Where the image's pages `orig..orig+len` are now (pieces not discarded):
    /// (program address, offset into the run).
    pub fn places(&self, orig: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = orig + len;
        let mut out = Vec::new();
        for s in &self.segments {
            let (so, se) = (s.orig, s.orig + (s.end - s.start));
            let (lo, hi) = (so.max(orig), se.min(end));
            if lo < hi && !s.zero {
                out.push((s.start + (lo - so), lo - orig, hi - lo));
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn sources() -> Vec<Source> {
        vec![
            Source {
                addr: 0x10000,
                pages: 4,
                chunk: 0,
                page_in_chunk: 0,
            },
            Source {
                addr: 0x20000,
                pages: 2,
                chunk: 1,
                page_in_chunk: 0,
            },
        ]
    }

    #[test]
    fn faults_find_their_chunk_or_zero() {
        let src = sources();
        let mut sp = Space::new(&[(0x10000, 0x30000)], 2);
        assert_eq!(sp.answer(&src, 0x10000 + 5), FaultAnswer::Chunk(0));
        assert_eq!(sp.answer(&src, 0x13fff), FaultAnswer::Chunk(0));
        assert_eq!(sp.answer(&src, 0x14000), FaultAnswer::Zero);
        assert_eq!(sp.answer(&src, 0x21000), FaultAnswer::Chunk(1));
        assert_eq!(offset_in_chunk(&src, 0x21000), Some(P));
        assert_eq!(offset_in_chunk(&src, 0x12000), Some(2 * P));
        assert_eq!(offset_in_chunk(&src, 0x14000), None);
        sp.done[1] = true;
        assert_eq!(sp.answer(&src, 0x21000), FaultAnswer::Zero);
        // Outside every registered region.
        assert_eq!(sp.answer(&src, 0x40000), FaultAnswer::Zero);
    }

    #[test]
    fn discarded_pages_read_zero_and_are_not_filled() {
        let src = sources();
        let mut sp = Space::new(&[(0x10000, 0x30000)], 2);
        sp.discard(0x11000, 0x12000);
        assert_eq!(sp.answer(&src, 0x11000), FaultAnswer::Zero);
        assert_eq!(sp.answer(&src, 0x12000), FaultAnswer::Chunk(0));
        assert_eq!(
            sp.places(0x10000, 4 * P),
            vec![(0x10000, 0, P), (0x12000, 2 * P, 2 * P)]
        );
    }

    #[test]
    fn moved_pages_are_found_at_their_new_place() {
        let src = sources();
        let mut sp = Space::new(&[(0x10000, 0x30000)], 2);
        // Move the second half of the first run far away.
        sp.remap(0x12000, 0x90000, 2 * P);
        assert_eq!(sp.answer(&src, 0x12000), FaultAnswer::Zero);
        assert_eq!(sp.answer(&src, 0x91000), FaultAnswer::Chunk(0));
        assert_eq!(
            sp.places(0x10000, 4 * P),
            vec![(0x10000, 0, 2 * P), (0x90000, 2 * P, 2 * P)]
        );
        // Unmapped pages are gone.
        sp.unmap(0x90000, 0x91000);
        assert_eq!(
            sp.places(0x10000, 4 * P),
            vec![(0x10000, 0, 2 * P), (0x91000, 3 * P, P)]
        );
        // A move onto registered memory replaces what was there.
        sp.remap(0x10000, 0x20000, P);
        assert_eq!(sp.answer(&src, 0x20000), FaultAnswer::Chunk(0));
        assert_eq!(sp.places(0x20000, 2 * P), vec![(0x21000, P, P)]);
        let mut starts: Vec<u64> = sp.segments.iter().map(|s| s.start).collect();
        starts.dedup();
        assert_eq!(starts.len(), sp.segments.len());
        assert!(sp.segments.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
