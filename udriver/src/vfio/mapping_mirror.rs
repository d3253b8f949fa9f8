//! The container's record of its DMA mappings, as the kernel holds them: a mapping is
//! recorded once the kernel made it and dropped once the kernel removed it. It answers
//! `mappings()` and `mapped_bytes()`, the mapping limit, and which mapping is in the
//! way when the kernel refuses a map or an unmap.
//!
//! Mappings are kept by first IOVA, which finds the usual unmap (exactly one mapping)
//! in one lookup. Windows announced with `DmaMapper::expect_pages` (a policy's
//! one-page slots) are indexed directly by page instead: their mappings are made and
//! removed on every request, and an array slot costs less to fill and clear than a
//! hash table entry.

use dma::{AddressMap, DmaAccess, DmaMapping, HostVirtAddr, Iova, IovaRange};

/// The most pages one announced window may index (16 MiB of IOVA with 4 KiB pages);
/// a larger announcement is ignored.
const MAX_WINDOW_PAGES: u64 = 4096;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct MappingMirror {
    by_start: AddressMap<DmaMapping>,
    windows: Vec<PageWindow>,
}

/// One announced window: the one-page mappings inside it, by page.
#[derive(Debug)]
struct PageWindow {
    range: IovaRange,
    page_shift: u32,
    /// Where each page is mapped to, and how; `None` if it is not mapped as one page.
    pages: Vec<Option<(HostVirtAddr, DmaAccess)>>,
    count: usize,
}

impl PageWindow {
    /// The index of the page a one-page mapping at `start` of `len` bytes occupies, if
    /// it is one of this window's pages.
    fn index(&self, start: u64, len: u64) -> Option<usize> {
        let offset = start.checked_sub(self.range.start().0)?;
        let page = 1u64 << self.page_shift;
        let whole_page = len == page && offset & (page - 1) == 0;
        (whole_page && offset < self.range.len()).then_some((offset >> self.page_shift) as usize)
    }

    fn mapping(&self, index: usize, (vaddr, access): (HostVirtAddr, DmaAccess)) -> DmaMapping {
        let start = self.range.start().0 + ((index as u64) << self.page_shift);
        DmaMapping {
            // Inside the window, so neither empty nor wrapping.
            range: IovaRange::new(Iova(start), 1 << self.page_shift).unwrap_or(self.range),
            vaddr,
            access,
        }
    }

    fn iter(&self) -> impl Iterator<Item = DmaMapping> + '_ {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|target| self.mapping(i, target)))
    }
}

impl MappingMirror {
    /// Number of mappings.
    pub(crate) fn len(&self) -> usize {
        self.by_start.len() + self.windows.iter().map(|w| w.count).sum::<usize>()
    }

    /// Forgets every mapping (the IOMMU context is gone); announced windows stay.
    pub(crate) fn clear(&mut self) {
        self.by_start.clear();
        for w in &mut self.windows {
            w.pages.fill(None);
            w.count = 0;
        }
    }

    /// Records a mapping the kernel made (so it overlaps none recorded).
    pub(crate) fn insert(&mut self, mapping: DmaMapping) {
        let (start, len) = (mapping.iova().0, mapping.len());
        for w in &mut self.windows {
            if let Some(i) = w.index(start, len) {
                let previous = w.pages[i].replace((mapping.vaddr, mapping.access));
                debug_assert!(previous.is_none(), "the kernel made overlapping mappings");
                w.count += 1;
                return;
            }
        }
        let previous = self.by_start.insert(start, mapping);
        debug_assert!(previous.is_none(), "the kernel made overlapping mappings");
    }

    /// Removes and returns the mapping that starts at `start`, if it lies inside
    /// `within`.
    fn remove_at(&mut self, start: u64, within: &IovaRange) -> Option<DmaMapping> {
        for w in &mut self.windows {
            let page = 1u64 << w.page_shift;
            if let Some(i) = w.index(start, page) {
                if let Some(target) = w.pages[i] {
                    let mapping = w.mapping(i, target);
                    if !within.contains_range(&mapping.range) {
                        return None;
                    }
                    w.pages[i] = None;
                    w.count -= 1;
                    return Some(mapping);
                }
            }
        }
        // Removed first and put back in the rare miss: one probe per mapping.
        let mapping = self.by_start.remove(&start)?;
        if !within.contains_range(&mapping.range) {
            self.by_start.insert(start, mapping);
            return None;
        }
        Some(mapping)
    }

    /// Drops the mappings the kernel removed when it unmapped `range`, `unmapped` bytes
    /// in all: under TYPE1v2 exactly those lying wholly inside it. Walks from the
    /// range's start through mappings that follow each other (a request's pieces, or
    /// adjacent requests unmapped together); only a range with holes in it needs a scan.
    pub(crate) fn remove_unmapped(&mut self, range: IovaRange, unmapped: u64) {
        for w in &mut self.windows {
            if let Some(i) = w.index(range.start().0, range.len()) {
                // Exactly one page of a window, the usual unmap: a one-page mapping
                // there is always in the window, and nothing else fits in the range.
                if w.pages[i].take().is_some() {
                    w.count -= 1;
                }
                return;
            }
        }
        let mut removed = 0;
        let mut at = range.start().0;
        while removed < unmapped {
            let Some(m) = self.remove_at(at, &range) else {
                break;
            };
            removed += m.len();
            match m.range.end() {
                Some(next) => at = next.0,
                None => break,
            }
        }
        if removed < unmapped {
            self.by_start.retain(|_, m| !range.contains_range(&m.range));
            for w in &mut self.windows {
                for i in 0..w.pages.len() {
                    if let Some(target) = w.pages[i] {
                        if range.contains_range(&w.mapping(i, target).range) {
                            w.pages[i] = None;
                            w.count -= 1;
                        }
                    }
                }
            }
        }
    }

    /// Every mapping, in no particular order.
    fn iter(&self) -> impl Iterator<Item = DmaMapping> + '_ {
        self.by_start
            .values()
            .copied()
            .chain(self.windows.iter().flat_map(PageWindow::iter))
    }

    /// A recorded mapping that overlaps `range` (a scan: for explaining a refusal).
    pub(crate) fn overlapping(&self, range: &IovaRange) -> Option<IovaRange> {
        self.iter()
            .map(|m| m.range)
            .filter(|r| r.overlaps(range))
            .min()
    }

    /// A recorded mapping that an unmap of `range` would split (a scan: for explaining
    /// a refusal).
    pub(crate) fn split_by(&self, range: &IovaRange) -> Option<IovaRange> {
        self.iter()
            .map(|m| m.range)
            .filter(|r| r.overlaps(range) && !range.contains_range(r))
            .min()
    }

    /// Bytes mapped.
    pub(crate) fn bytes(&self) -> u64 {
        self.iter().map(|m| m.len()).sum()
    }

    /// The mappings in IOVA order.
    pub(crate) fn sorted(&self) -> Vec<DmaMapping> {
        let mut all: Vec<DmaMapping> = self.iter().collect();
        all.sort_unstable_by_key(DmaMapping::iova);
        all
    }

    /// Indexes the one-page mappings inside `window` by page from now on. Ignored
    /// unless the window is page-aligned, at most [`MAX_WINDOW_PAGES`] pages, and
    /// clear of the windows already announced.
    pub(crate) fn expect_pages(&mut self, window: IovaRange, page_size: u64) {
        let usable = page_size.is_power_of_two()
            && window.check_alignment(page_size).is_ok()
            && window.len() / page_size <= MAX_WINDOW_PAGES
            && !self.windows.iter().any(|w| w.range.overlaps(&window));
        if !usable {
            return;
        }
        let mut w = PageWindow {
            range: window,
            page_shift: page_size.trailing_zeros(),
            pages: vec![None; (window.len() / page_size) as usize],
            count: 0,
        };
        // One-page mappings already made there move into the window.
        self.by_start
            .retain(|&start, m| match w.index(start, m.len()) {
                Some(i) => {
                    w.pages[i] = Some((m.vaddr, m.access));
                    w.count += 1;
                    false
                }
                None => true,
            });
        self.windows.push(w);
    }

    /// Stops indexing `window` by page; its mappings stay recorded.
    pub(crate) fn forget_pages(&mut self, window: IovaRange) {
        let Some(at) = self.windows.iter().position(|w| w.range == window) else {
            return;
        };
        let w = self.windows.swap_remove(at);
        for m in w.iter() {
            self.by_start.insert(m.iova().0, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    fn mapping(iova: u64, len: u64) -> DmaMapping {
        DmaMapping::new(
            Iova(iova),
            HostVirtAddr(0x7000_0000_0000 + iova),
            len,
            DmaAccess::ReadWrite,
        )
        .unwrap()
    }

    fn r(iova: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(iova), len).unwrap()
    }

    fn starts(m: &MappingMirror) -> Vec<u64> {
        m.sorted().iter().map(|x| x.iova().0).collect()
    }

    /// The same operations, with and without a window over [0x10_0000, +64 KiB).
    fn mirrors() -> [MappingMirror; 2] {
        let mut windowed = MappingMirror::default();
        windowed.expect_pages(r(0x10_0000, 0x10000), PAGE);
        [MappingMirror::default(), windowed]
    }

    #[test]
    fn drops_what_the_kernel_unmapped() {
        for mut mirror in mirrors() {
            for (iova, len) in [
                (0x10_0000, 0x1000),
                (0x10_1000, 0x2000),
                (0x10_3000, 0x1000),
                (0x20_0000, 0x1000),
                (0x20_4000, 0x1000),
                (0x30_0000, 0x1000),
            ] {
                mirror.insert(mapping(iova, len));
            }
            assert_eq!(mirror.len(), 6);
            assert_eq!(mirror.bytes(), 0x7000);
            // One mapping, exactly.
            mirror.remove_unmapped(r(0x30_0000, 0x1000), 0x1000);
            assert_eq!(mirror.len(), 5);
            // Three that follow each other (window pages and a two-page mapping among
            // them), in one unmap.
            mirror.remove_unmapped(r(0x10_0000, 0x4000), 0x4000);
            assert_eq!(starts(&mirror), vec![0x20_0000, 0x20_4000]);
            // A range with a hole, starting in the hole: found by the scan.
            mirror.remove_unmapped(r(0x1f_f000, 0x10000), 0x2000);
            assert!(starts(&mirror).is_empty());
            assert_eq!(mirror.bytes(), 0);
            // Nothing there: nothing removed.
            mirror.insert(mapping(0x40_0000, 0x1000));
            mirror.remove_unmapped(r(0x50_0000, 0x1000), 0);
            assert_eq!(mirror.len(), 1);
        }
    }

    #[test]
    fn names_the_mapping_in_the_way() {
        for mut mirror in mirrors() {
            mirror.insert(mapping(0x10_0000, 0x4000));
            mirror.insert(mapping(0x10_8000, 0x1000));
            mirror.insert(mapping(0x20_0000, 0x1000));
            assert_eq!(
                mirror.overlapping(&r(0x10_3000, 0x2000)),
                Some(r(0x10_0000, 0x4000))
            );
            assert_eq!(
                mirror.overlapping(&r(0x10_7000, 0x2000)),
                Some(r(0x10_8000, 0x1000))
            );
            assert_eq!(mirror.overlapping(&r(0x10_4000, 0x1000)), None);
            assert_eq!(
                mirror.split_by(&r(0x10_1000, 0x1000)),
                Some(r(0x10_0000, 0x4000))
            );
            assert_eq!(mirror.split_by(&r(0x10_0000, 0x20_0000)), None);
            assert_eq!(mirror.split_by(&r(0x1f_f000, 0x1000)), None);
            // A page of the window is not split by an unmap that holds it whole.
            assert_eq!(mirror.split_by(&r(0x10_8000, 0x1000)), None);
        }
    }

    #[test]
    fn window_pages_are_listed_with_the_rest_and_survive_forgetting() {
        let [_, mut mirror] = mirrors();
        mirror.insert(mapping(0x10_2000, 0x1000));
        mirror.insert(mapping(0x8000, 0x1000));
        let before = mirror.sorted();
        assert_eq!(
            before,
            vec![mapping(0x8000, 0x1000), mapping(0x10_2000, 0x1000)]
        );
        assert_eq!(
            mirror.windows[0].count, 1,
            "the window page is indexed by page"
        );
        mirror.forget_pages(r(0x10_0000, 0x10000));
        assert!(mirror.windows.is_empty());
        assert_eq!(mirror.sorted(), before);
        // Announcing it again moves the page back in.
        mirror.expect_pages(r(0x10_0000, 0x10000), PAGE);
        assert_eq!(mirror.windows[0].count, 1);
        assert_eq!(mirror.by_start.len(), 1);
        assert_eq!(mirror.sorted(), before);
        // Unmapping exactly that page drops it; unmapping an unmapped page, nothing.
        mirror.remove_unmapped(r(0x10_2000, 0x1000), 0x1000);
        assert_eq!(mirror.sorted(), vec![mapping(0x8000, 0x1000)]);
        mirror.remove_unmapped(r(0x10_2000, 0x1000), 0);
        assert_eq!(mirror.len(), 1);
        mirror.clear();
        assert_eq!(mirror.len(), 0);
    }

    #[test]
    fn unusable_announcements_are_ignored() {
        let mut mirror = MappingMirror::default();
        mirror.expect_pages(r(0x10_0800, 0x10000), PAGE);
        mirror.expect_pages(r(0x10_0000, (MAX_WINDOW_PAGES + 1) * PAGE), PAGE);
        mirror.expect_pages(r(0x10_0000, 0x10000), 0x1800);
        assert!(mirror.windows.is_empty());
        mirror.expect_pages(r(0x10_0000, 0x10000), PAGE);
        mirror.expect_pages(r(0x10_8000, 0x10000), PAGE);
        assert_eq!(mirror.windows.len(), 1, "overlapping announcement ignored");
    }
}
