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

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use smallvec::SmallVec;

use crate::address::GuestPhysAddr;
use crate::iova::IovaRange;
use crate::iova_allocator::AddressHasher;
use crate::sg_list::PageRun;

/// The page runs of one request.
pub(crate) type Runs = SmallVec<[PageRun<GuestPhysAddr>; 1]>;

/// One `map_sg`'s worth of mappings.
#[derive(Debug)]
pub(crate) struct LiveMapping {
    pub(crate) iova: IovaRange,
    /// The guest pages behind it, to refuse removing a region that is in use.
    pub(crate) gpa_runs: Runs,
}

/// Live requests, by first IOVA; see the module documentation.
#[derive(Debug)]
pub(crate) struct LiveTable {
    page_mask: u64,
    by_start: HashMap<u64, LiveMapping, BuildHasherDefault<AddressHasher>>,
    /// First IOVA to length, of the requests longer than one page.
    multi_page: BTreeMap<u64, u64>,
}

impl LiveTable {
    /// An empty table for IOVA ranges whose start and length are multiples of
    /// `page_size` (a power of two): the IOVA allocator's granule.
    pub(crate) fn new(page_size: u64) -> LiveTable {
        LiveTable {
            page_mask: page_size - 1,
            by_start: HashMap::default(),
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
        let (start, len) = (mapping.iova.start().0, mapping.iova.len());
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
            if addr - first_page < m.iova.len() {
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
        if mapping.iova.len() > self.page_mask + 1 {
            self.multi_page.remove(&start);
        }
        Some(mapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iova::Iova;

    fn live(start: u64, len: u64) -> LiveMapping {
        LiveMapping {
            iova: IovaRange::new(Iova(start), len).unwrap(),
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
}
