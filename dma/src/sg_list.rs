//! Scatter-gather lists: the memory one DMA request touches.
//!
//! A guest's `pci_dma_map_sg` names buffers by guest-physical address; a user-level
//! driver names its own buffers by host virtual address; a mapped list hands the device
//! IOVAs. `SgList<A>` is generic over which, so the address space of every list is in
//! its type (`GuestSgList`, `HostSgList`, `BusSgList`) and a translation between them is
//! always an explicit step.
//!
//! Contiguous segments are merged as they are added, and `page_runs` merges segments
//! that share or abut pages, because each run becomes one IOMMU mapping: fewer runs
//! means fewer ioctls.

use std::iter::FusedIterator;

use smallvec::SmallVec;

use crate::address::{Address, GuestPhysAddr, HostVirtAddr};
use crate::error::DmaError;
use crate::iova::Iova;

/// One contiguous piece of a scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SgSegment<A> {
    /// First byte.
    pub addr: A,
    /// Length in bytes (never zero).
    pub len: u64,
}

impl<A: Address> SgSegment<A> {
    /// A segment of `len` bytes at `addr`. Errors if `len` is zero or the segment would
    /// reach past the last byte of the address space.
    pub fn new(addr: A, len: u64) -> Result<SgSegment<A>, DmaError> {
        if len == 0 {
            return Err(DmaError::EmptyRange {
                start: addr.to_raw(),
            });
        }
        if addr.to_raw().checked_add(len).is_none() {
            return Err(DmaError::RangeOverflow {
                start: addr.to_raw(),
                len,
            });
        }
        Ok(SgSegment { addr, len })
    }

    /// One past the last byte (never overflows, by construction).
    pub fn end(&self) -> u64 {
        self.addr.to_raw() + self.len
    }

    /// The run of whole pages covering this segment; `page_size` must be a power of
    /// two. The same run [`SgList::page_runs`] gives a one-segment list.
    pub fn page_run(&self, page_size: u64) -> PageRun<A> {
        debug_assert!(page_size.is_power_of_two());
        let (start, end) = page_span(self, page_size - 1);
        PageRun {
            start: A::from_raw(start),
            len: (end - u128::from(start)) as u64,
        }
    }
}

/// A run of whole pages covering one or more segments: the unit that gets mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRun<A> {
    /// First page (page-aligned).
    pub start: A,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

/// A scatter-gather list in address space `A`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SgList<A> {
    /// Inline up to two segments: most requests are one buffer, and a list built per
    /// request should not cost a heap allocation.
    segments: SmallVec<[SgSegment<A>; 2]>,
    total_len: u64,
}

/// Guest-physical buffers, as a guest's driver describes them.
pub type GuestSgList = SgList<GuestPhysAddr>;
/// Host-virtual buffers, as a user-level driver describes them.
pub type HostSgList = SgList<HostVirtAddr>;
/// Bus addresses (IOVAs) to program into a device.
pub type BusSgList = SgList<Iova>;

impl<A> Default for SgList<A> {
    fn default() -> Self {
        SgList {
            segments: SmallVec::new(),
            total_len: 0,
        }
    }
}

impl<A: Address> SgList<A> {
    /// An empty list.
    pub fn new() -> SgList<A> {
        SgList::default()
    }

    /// A list of one segment of `len` bytes at `addr` (the usual request): errors as
    /// [`SgSegment::new`] does.
    pub fn single(addr: A, len: u64) -> Result<SgList<A>, DmaError> {
        Ok(SgList {
            segments: smallvec::smallvec![SgSegment::new(addr, len)?],
            total_len: len,
        })
    }

    /// A list of `(addr, len)` pieces, merged where contiguous.
    pub fn from_pieces(pieces: impl IntoIterator<Item = (A, u64)>) -> Result<SgList<A>, DmaError> {
        let mut list = SgList::new();
        for (addr, len) in pieces {
            list.push(addr, len)?;
        }
        Ok(list)
    }

    /// Appends `len` bytes at `addr`, extending the last segment if it ends exactly at
    /// `addr`.
    pub fn push(&mut self, addr: A, len: u64) -> Result<(), DmaError> {
        let seg = SgSegment::new(addr, len)?;
        let total_len = self
            .total_len
            .checked_add(len)
            .ok_or_else(|| DmaError::RangeOverflow {
                start: addr.to_raw(),
                len,
            })?;
        match self.segments.last_mut() {
            Some(last) if last.end() == addr.to_raw() => last.len += len,
            _ => self.segments.push(seg),
        }
        self.total_len = total_len;
        Ok(())
    }

    /// The segments, after merging.
    pub fn segments(&self) -> &[SgSegment<A>] {
        &self.segments
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether the list has no segments.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Total bytes across all segments.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Runs of whole pages covering the segments, in list order. Consecutive segments
    /// whose pages touch or overlap share a run.
    ///
    /// `page_size` must be a power of two.
    pub fn page_runs(&self, page_size: u64) -> PageRuns<'_, A> {
        debug_assert!(page_size.is_power_of_two());
        PageRuns {
            segments: self.segments.iter().peekable(),
            mask: page_size - 1,
        }
    }

    /// Every page the list touches, page-aligned, in list order (a page shared by two
    /// consecutive segments appears once).
    pub fn pages(&self, page_size: u64) -> impl Iterator<Item = A> + '_ {
        self.page_runs(page_size).flat_map(move |run| {
            (0..run.len / page_size).map(move |i| A::from_raw(run.start.to_raw() + i * page_size))
        })
    }
}

/// Iterator over the page runs of an `SgList`; see [`SgList::page_runs`].
#[derive(Clone, Debug)]
pub struct PageRuns<'a, A> {
    segments: std::iter::Peekable<std::slice::Iter<'a, SgSegment<A>>>,
    mask: u64,
}

/// The page-aligned span `[start, end)` of a segment. `end` is computed in u128 because
/// rounding the last page up may reach 2^64.
fn page_span<A: Address>(seg: &SgSegment<A>, mask: u64) -> (u64, u128) {
    let start = seg.addr.to_raw() & !mask;
    let end = (u128::from(seg.end()) + u128::from(mask)) & !u128::from(mask);
    (start, end)
}

impl<A: Address> Iterator for PageRuns<'_, A> {
    type Item = PageRun<A>;

    fn next(&mut self) -> Option<PageRun<A>> {
        let first = self.segments.next()?;
        let (start, mut end) = page_span(first, self.mask);
        while let Some(next) = self.segments.peek() {
            let (next_start, next_end) = page_span(next, self.mask);
            if u128::from(next_start) < u128::from(start) || u128::from(next_start) > end {
                break;
            }
            end = end.max(next_end);
            self.segments.next();
        }
        // A run never exceeds 2^64 - page: segments end at or below u64::MAX.
        Some(PageRun {
            start: A::from_raw(start),
            len: (end - u128::from(start)) as u64,
        })
    }
}

impl<A: Address> FusedIterator for PageRuns<'_, A> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa(a: u64) -> GuestPhysAddr {
        GuestPhysAddr(a)
    }

    #[test]
    fn push_merges_contiguous_segments() {
        let list = GuestSgList::from_pieces([
            (gpa(0x1000), 0x800),
            (gpa(0x1800), 0x800),
            (gpa(0x4000), 8),
        ])
        .unwrap();
        assert_eq!(
            list.segments(),
            &[
                SgSegment {
                    addr: gpa(0x1000),
                    len: 0x1000
                },
                SgSegment {
                    addr: gpa(0x4000),
                    len: 8
                },
            ]
        );
        assert_eq!(list.total_len(), 0x1008);
    }

    #[test]
    fn rejects_empty_and_wrapping_segments() {
        let mut list = HostSgList::new();
        assert!(list.push(HostVirtAddr(0x1000), 0).is_err());
        assert!(list.push(HostVirtAddr(u64::MAX - 4), 8).is_err());
        assert!(list.is_empty());
        assert!(HostSgList::single(HostVirtAddr(0x1000), 0).is_err());
        assert!(HostSgList::single(HostVirtAddr(u64::MAX - 4), 8).is_err());
        assert_eq!(
            HostSgList::single(HostVirtAddr(0x1000), 8).unwrap(),
            HostSgList::from_pieces([(HostVirtAddr(0x1000), 8)]).unwrap()
        );
    }

    #[test]
    fn page_runs_join_segments_sharing_or_touching_pages() {
        // Two sub-page buffers in the same page, then one in the next page, then a gap.
        let list = GuestSgList::from_pieces([
            (gpa(0x1100), 0x100),
            (gpa(0x1400), 0x100),
            (gpa(0x2000), 0x1800),
            (gpa(0x9ff0), 0x20),
        ])
        .unwrap();
        let runs: Vec<_> = list.page_runs(0x1000).collect();
        assert_eq!(
            runs,
            vec![
                PageRun {
                    start: gpa(0x1000),
                    len: 0x3000
                },
                PageRun {
                    start: gpa(0x9000),
                    len: 0x2000
                },
            ]
        );
        let pages: Vec<_> = list.pages(0x1000).map(|p| p.0).collect();
        assert_eq!(pages, vec![0x1000, 0x2000, 0x3000, 0x9000, 0xa000]);
    }

    #[test]
    fn a_segment_page_run_is_the_one_run_of_its_list() {
        for (addr, len) in [(0x1100, 0x100), (0x1000, 0x1000), (0x1fff, 2), (0x3000, 1)] {
            let seg = SgSegment::new(gpa(addr), len).unwrap();
            let list = GuestSgList::from_pieces([(gpa(addr), len)]).unwrap();
            let runs: Vec<_> = list.page_runs(0x1000).collect();
            assert_eq!(runs, vec![seg.page_run(0x1000)]);
        }
        let seg = SgSegment::new(gpa(0x1fff), 2).unwrap();
        assert_eq!(
            seg.page_run(0x1000),
            PageRun {
                start: gpa(0x1000),
                len: 0x2000
            }
        );
    }

    #[test]
    fn page_runs_keep_list_order() {
        // Out of order: a later segment below an earlier one starts a new run.
        let list =
            GuestSgList::from_pieces([(gpa(0x5000), 0x1000), (gpa(0x4000), 0x1000)]).unwrap();
        assert_eq!(list.page_runs(0x1000).count(), 2);
    }

    #[test]
    fn top_page_is_handled() {
        let list = HostSgList::from_pieces([(HostVirtAddr(u64::MAX - 0x10), 0x10)]).unwrap();
        let runs: Vec<_> = list.page_runs(0x1000).collect();
        assert_eq!(
            runs,
            vec![PageRun {
                start: HostVirtAddr(u64::MAX - 0xfff),
                len: 0x1000
            }]
        );
    }
}
