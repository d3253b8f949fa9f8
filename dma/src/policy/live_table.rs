//! The per-request mappings that are live, found by any bus address inside them.
//!
//! `unmap_sg` must find, for each bus address a guest hands back, the request whose
//! IOVA range contains it. An ordered map answers that, but every insert or remove
//! shifts entries within a B-tree node, and per-request traffic (map in one order,
//! unmap in another) does that on every call. So requests are kept in a hash map by
//! their first IOVA, which finds any address in a request's first page (IOVAs are
//! page-aligned and requests never overlap), and only requests longer than a page are
//! also kept in an ordered map, for addresses past their first page. Single-page
//! requests, the most frequent, never touch the ordered map.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::address::GuestPhysAddr;
use crate::address_map::AddressMap;
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::IovaLease;
use crate::sg_list::PageRun;

/// The page runs of one request.
pub(crate) type Runs = SmallVec<[PageRun<GuestPhysAddr>; 1]>;

/// One `map_sg`'s worth of mappings.
#[derive(Debug)]
pub(crate) struct LiveMapping {
    /// The request's IOVAs, held until they have been unmapped.
    pub(crate) lease: IovaLease,
    /// The guest pages behind it, to refuse removing a region that is in use.
    pub(crate) gpa_runs: Runs,
}

impl LiveMapping {
    pub(crate) fn iova(&self) -> IovaRange {
        self.lease.range()
    }

    /// Whether `[addr, addr + len)` lies wholly inside this request.
    fn holds(&self, addr: u64, len: u64) -> bool {
        IovaRange::new(Iova(addr), len).is_ok_and(|r| self.iova().contains_range(&r))
    }
}

/// Live requests, by first IOVA; see the module documentation.
#[derive(Debug)]
pub(crate) struct LiveTable {
    page_mask: u64,
    by_start: AddressMap<LiveMapping>,
    /// First IOVA to length, of the requests longer than one page.
    multi_page: BTreeMap<u64, u64>,
}

impl LiveTable {
    /// An empty table for IOVA ranges whose start and length are multiples of
    /// `page_size` (a power of two): the IOVA allocator's granule.
    pub(crate) fn new(page_size: u64) -> LiveTable {
        LiveTable {
            page_mask: page_size - 1,
            by_start: AddressMap::default(),
            multi_page: BTreeMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_start.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &LiveMapping> {
        self.by_start.values()
    }

    /// Adds a request. Its IOVA range must be page-aligned and overlap no live request
    /// (the IOVA allocator guarantees both).
    pub(crate) fn insert(&mut self, mapping: LiveMapping) {
        let (start, len) = (mapping.iova().start().0, mapping.iova().len());
        debug_assert_eq!(start & self.page_mask, 0);
        if len > self.page_mask + 1 {
            self.multi_page.insert(start, len);
        }
        let previous = self.by_start.insert(start, mapping);
        debug_assert!(previous.is_none(), "two live requests at {start:#x}");
    }

    /// The first IOVA and the request whose range contains `addr`.
    pub(crate) fn find(&self, addr: u64) -> Option<(u64, &LiveMapping)> {
        let first_page = addr & !self.page_mask;
        if let Some(m) = self.by_start.get(&first_page) {
            if addr - first_page < m.iova().len() {
                return Some((first_page, m));
            }
        }
        let (&start, &len) = self.multi_page.range(..=addr).next_back()?;
        if addr - start >= len {
            return None;
        }
        self.by_start.get(&start).map(|m| (start, m))
    }

    /// Removes the request starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) -> Option<LiveMapping> {
        let mapping = self.by_start.remove(&start)?;
        self.forget_multi_page(&mapping);
        Some(mapping)
    }

    /// Removes the request that `[addr, addr + len)` lies wholly inside, if any. A
    /// segment that starts in its request's first page (a one-page request always
    /// does) costs one probe.
    pub(crate) fn take_holding(&mut self, addr: u64, len: u64) -> Option<LiveMapping> {
        let first_page = addr & !self.page_mask;
        if let Some(mapping) = self.by_start.remove(&first_page) {
            if mapping.holds(addr, len) {
                self.forget_multi_page(&mapping);
                return Some(mapping);
            }
            self.by_start.insert(first_page, mapping);
        }
        let (start, mapping) = self.find(addr)?;
        if !mapping.holds(addr, len) {
            return None;
        }
        self.remove(start)
    }

    /// Whether `[addr, addr + len)` lies wholly inside one live request; returns that
    /// request's first IOVA.
    pub(crate) fn holder(&self, addr: u64, len: u64) -> Option<u64> {
        let (start, mapping) = self.find(addr)?;
        mapping.holds(addr, len).then_some(start)
    }

    fn forget_multi_page(&mut self, mapping: &LiveMapping) {
        if mapping.iova().len() > self.page_mask + 1 {
            self.multi_page.remove(&mapping.iova().start().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(start: u64, len: u64) -> LiveMapping {
        LiveMapping {
            lease: IovaLease::for_test(IovaRange::new(Iova(start), len).unwrap()),
            gpa_runs: Runs::new(),
        }
    }

    #[test]
    fn finds_every_address_inside_and_none_outside() {
        let mut t = LiveTable::new(0x1000);
        t.insert(live(0x10_0000, 0x1000));
        t.insert(live(0x10_1000, 0x3000));
        t.insert(live(0x20_0000, 0x1000));
        for (addr, start) in [
            (0x10_0000, Some(0x10_0000)),
            (0x10_0fff, Some(0x10_0000)),
            (0x10_1000, Some(0x10_1000)),
            (0x10_2abc, Some(0x10_1000)),
            (0x10_3fff, Some(0x10_1000)),
            (0x10_4000, None),
            (0x1f_ffff, None),
            (0x20_0800, Some(0x20_0000)),
            (0x20_1000, None),
            (0, None),
        ] {
            assert_eq!(t.find(addr).map(|(s, _)| s), start, "{addr:#x}");
        }
        assert!(t.remove(0x10_1000).is_some());
        assert_eq!(t.find(0x10_2abc).map(|(s, _)| s), None);
        assert!(t.remove(0x10_1000).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn take_holding_removes_only_a_request_that_wholly_holds_the_segment() {
        let mut t = LiveTable::new(0x1000);
        t.insert(live(0x10_0000, 0x1000));
        t.insert(live(0x10_1000, 0x3000));
        // Past the end of a one-page request, or straddling two requests: refused,
        // and both are still there.
        assert!(t.take_holding(0x10_0800, 0x1000).is_none());
        assert!(t.take_holding(0x10_3800, 0x1000).is_none());
        assert_eq!(t.len(), 2);
        assert_eq!(t.holder(0x10_2000, 0x2000), Some(0x10_1000));
        assert_eq!(t.holder(0x10_2000, 0x2001), None);
        // Inside, past the first page of a longer request.
        let m = t.take_holding(0x10_2000, 0x2000).unwrap();
        assert_eq!(m.iova().start(), Iova(0x10_1000));
        assert!(t.find(0x10_2000).is_none(), "gone from the ordered map too");
        let m = t.take_holding(0x10_0010, 0x10).unwrap();
        assert_eq!(m.iova().start(), Iova(0x10_0000));
        assert_eq!(t.len(), 0);
        assert!(t.take_holding(0x10_0010, 0x10).is_none());
    }
}
