//! The container's record of its DMA mappings, as the kernel holds them: a mapping is
//! recorded once the kernel made it and dropped once the kernel removed it. It answers
//! `mappings()` and `mapped_bytes()`, the mapping limit, and which mapping is in the
//! way when the kernel refuses a map or an unmap.
//!
//! Mappings are kept by first IOVA, which finds the usual unmap (exactly one mapping)
//! in one lookup. Windows announced with `DmaMapper::expect_pages` (a policy's
//! one-page slots) are indexed directly by page instead, one word per page: their
//! mappings are made and removed on every request, and filling and clearing a word
//! touches less memory than a hash table entry (under emulation, every cache line a
//! request touches after the kernel's work costs a miss). For the same reason the
//! count and the first window, which every map reads, come first and fit one line.

use dma::{AddressMap, DmaAccess, DmaMapping, HostVirtAddr, Iova, IovaRange};

/// The most pages one announced window may index (16 MiB of IOVA with 4 KiB pages);
/// a larger announcement is ignored.
const MAX_WINDOW_PAGES: u64 = 4096;

/// See the module documentation.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct MappingMirror {
    /// Mappings recorded, in the windows and by key.
    count: usize,
    /// The first announced window (usually the only one: one policy's).
    first: Option<PageWindow>,
    more: Vec<PageWindow>,
    by_start: AddressMap<DmaMapping>,
}

/// Where a one-page mapping goes in an announced window: (window, page).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageSlot {
    window: usize,
    page: usize,
    /// The window lies inside one usable IOVA window of the IOMMU.
    pub(crate) usable: bool,
}

/// One announced window: the one-page mappings inside it, by page.
#[derive(Debug)]
#[repr(C)]
struct PageWindow {
    /// Per page, `vaddr | access` (see [`pack`]) of a one-page mapping there, or 0.
    pages: Box<[u64]>,
    range: IovaRange,
    page_shift: u32,
    /// Checked against the IOMMU's usable IOVA windows when announced.
    usable: bool,
}

/// A page's word: the host address (page-aligned, so its two low bits are free) with
/// the access in those bits (never 0).
fn pack(vaddr: HostVirtAddr, access: DmaAccess) -> u64 {
    vaddr.0
        | match access {
            DmaAccess::DeviceReads => 1,
            DmaAccess::DeviceWrites => 2,
            DmaAccess::ReadWrite => 3,
        }
}

fn unpack(word: u64) -> Option<(HostVirtAddr, DmaAccess)> {
    let access = match word & 3 {
        1 => DmaAccess::DeviceReads,
        2 => DmaAccess::DeviceWrites,
        3 => DmaAccess::ReadWrite,
        _ => return None,
    };
    Some((HostVirtAddr(word & !3), access))
}

impl PageWindow {
    /// The index of the page a one-page mapping at `start` of `len` bytes occupies, if
    /// it is one of this window's pages.
    #[inline]
    fn index(&self, start: u64, len: u64) -> Option<usize> {
        let offset = start.checked_sub(self.range.start().0)?;
        let page = 1u64 << self.page_shift;
        let whole_page = len == page && offset & (page - 1) == 0;
        (whole_page && offset < self.range.len()).then_some((offset >> self.page_shift) as usize)
    }

    fn mapping(&self, index: usize, word: u64) -> Option<DmaMapping> {
        let (vaddr, access) = unpack(word)?;
        let start = self.range.start().0 + ((index as u64) << self.page_shift);
        Some(DmaMapping {
            // Inside the window, so neither empty nor wrapping.
            range: IovaRange::new(Iova(start), 1 << self.page_shift).unwrap_or(self.range),
            vaddr,
            access,
        })
    }

    fn iter(&self) -> impl Iterator<Item = DmaMapping> + '_ {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(i, &word)| self.mapping(i, word))
    }

    /// Clears every page inside `range`; returns how many were mapped.
    fn clear_within(&mut self, range: &IovaRange) -> usize {
        let mut cleared = 0;
        for i in 0..self.pages.len() {
            let inside = self
                .mapping(i, self.pages[i])
                .is_some_and(|m| range.contains_range(&m.range));
            if inside {
                self.pages[i] = 0;
                cleared += 1;
            }
        }
        cleared
    }
}

impl MappingMirror {
    /// Number of mappings.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn windows(&self) -> impl Iterator<Item = &PageWindow> {
        self.first.iter().chain(&self.more)
    }

    fn windows_mut(&mut self) -> impl Iterator<Item = &mut PageWindow> {
        self.first.iter_mut().chain(&mut self.more)
    }

    /// Forgets every mapping (the IOMMU context is gone); announced windows stay, to
    /// be checked against the next IOMMU's windows.
    pub(crate) fn clear(&mut self) {
        self.by_start.clear();
        for w in self.windows_mut() {
            w.pages.fill(0);
            w.usable = false;
        }
        self.count = 0;
    }

    /// The window page a one-page mapping of `range` would occupy, if any. The first
    /// window is tried inline (`more` is empty unless `first` is set).
    #[inline]
    pub(crate) fn page_slot(&self, range: &IovaRange) -> Option<PageSlot> {
        let first = self.first.as_ref()?;
        match first.index(range.start().0, range.len()) {
            Some(page) => Some(PageSlot {
                window: 0,
                page,
                usable: first.usable,
            }),
            None if self.more.is_empty() => None,
            None => self.page_slot_beyond_first(range),
        }
    }

    #[inline(never)]
    fn page_slot_beyond_first(&self, range: &IovaRange) -> Option<PageSlot> {
        self.more.iter().enumerate().find_map(|(i, w)| {
            let page = w.index(range.start().0, range.len())?;
            Some(PageSlot {
                window: i + 1,
                page,
                usable: w.usable,
            })
        })
    }

    /// Records a mapping the kernel made (so it overlaps none recorded).
    pub(crate) fn insert(&mut self, mapping: DmaMapping) {
        self.insert_at(mapping, self.page_slot(&mapping.range));
    }

    /// Records a mapping the kernel made (so it overlaps none recorded); `slot` is what
    /// [`MappingMirror::page_slot`] said for its range (a one-page mapping inside a
    /// window is always recorded in the window).
    #[inline]
    pub(crate) fn insert_at(&mut self, mapping: DmaMapping, slot: Option<PageSlot>) {
        // A host address with its low bits set cannot be packed (no IOMMU maps one).
        let slot = slot.filter(|_| mapping.vaddr.0 & 3 == 0);
        let w = match slot {
            Some(PageSlot { window: 0, .. }) => self.first.as_mut(),
            Some(PageSlot { window, .. }) => self.more.get_mut(window - 1),
            None => None,
        };
        match (w, slot) {
            (Some(w), Some(slot)) => {
                let word = pack(mapping.vaddr, mapping.access);
                let previous = std::mem::replace(&mut w.pages[slot.page], word);
                debug_assert_eq!(previous, 0, "the kernel made overlapping mappings");
            }
            _ => self.insert_keyed(mapping),
        }
        self.count += 1;
    }

    /// Records a mapping outside the windows; out of line, so that the window path's
    /// callers keep small stack frames.
    #[inline(never)]
    fn insert_keyed(&mut self, mapping: DmaMapping) {
        let previous = self.by_start.insert(mapping.iova().0, mapping);
        debug_assert!(previous.is_none(), "the kernel made overlapping mappings");
    }

    /// Removes and returns the mapping that starts at `start`, if it lies inside
    /// `within`.
    fn remove_at(&mut self, start: u64, within: &IovaRange) -> Option<DmaMapping> {
        let mut found = None;
        for w in self.windows_mut() {
            let page = 1u64 << w.page_shift;
            if let Some(i) = w.index(start, page) {
                if let Some(mapping) = w.mapping(i, w.pages[i]) {
                    if !within.contains_range(&mapping.range) {
                        return None;
                    }
                    w.pages[i] = 0;
                    found = Some(mapping);
                    break;
                }
            }
        }
        if found.is_none() {
            // Removed first and put back in the rare miss: one probe per mapping.
            let mapping = self.by_start.remove(&start)?;
            if !within.contains_range(&mapping.range) {
                self.by_start.insert(start, mapping);
                return None;
            }
            found = Some(mapping);
        }
        self.count -= 1;
        found
    }

    /// Drops the mappings the kernel removed when it unmapped `range`, `unmapped` bytes
    /// in all: under TYPE1v2 exactly those lying wholly inside it. Walks from the
    /// range's start through mappings that follow each other (a request's pieces, or
    /// adjacent requests unmapped together); only a range with holes in it needs a scan.
    #[inline]
    pub(crate) fn remove_unmapped(&mut self, range: IovaRange, unmapped: u64) {
        // Exactly one page of a window, the usual unmap: a one-page mapping there is
        // always in the window, and nothing else fits in the range.
        if let Some(slot) = self.page_slot(&range) {
            let w = match slot.window {
                0 => self.first.as_mut(),
                i => self.more.get_mut(i - 1),
            };
            if let Some(w) = w {
                let removed = std::mem::take(&mut w.pages[slot.page]) != 0;
                self.count -= usize::from(removed);
                return;
            }
        }
        self.remove_walking(range, unmapped);
    }

    /// [`MappingMirror::remove_unmapped`] of anything but one window page.
    #[inline(never)]
    fn remove_walking(&mut self, range: IovaRange, unmapped: u64) {
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
            let before = self.by_start.len();
            self.by_start.retain(|_, m| !range.contains_range(&m.range));
            let mut dropped = before - self.by_start.len();
            for w in self.windows_mut() {
                dropped += w.clear_within(&range);
            }
            self.count -= dropped;
        }
    }

    /// Every mapping, in no particular order.
    fn iter(&self) -> impl Iterator<Item = DmaMapping> + '_ {
        self.by_start
            .values()
            .copied()
            .chain(self.windows().flat_map(PageWindow::iter))
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

    /// Indexes the one-page mappings inside `window` by page from now on; `usable`
    /// says the window lies inside one of the IOMMU's usable IOVA windows (so a map
    /// of one of its pages needs no other window check). Ignored unless the window is
    /// page-aligned, at most [`MAX_WINDOW_PAGES`] pages, and clear of the windows
    /// already announced.
    pub(crate) fn expect_pages(&mut self, window: IovaRange, page_size: u64, usable: bool) {
        let fits = page_size.is_power_of_two()
            && window.check_alignment(page_size).is_ok()
            && window.len() / page_size <= MAX_WINDOW_PAGES
            && !self.windows().any(|w| w.range.overlaps(&window));
        if !fits {
            return;
        }
        let mut w = PageWindow {
            pages: vec![0; (window.len() / page_size) as usize].into_boxed_slice(),
            range: window,
            page_shift: page_size.trailing_zeros(),
            usable,
        };
        // One-page mappings already made there move into the window.
        self.by_start.retain(|&start, m| {
            match w.index(start, m.len()).filter(|_| m.vaddr.0 & 3 == 0) {
                Some(i) => {
                    w.pages[i] = pack(m.vaddr, m.access);
                    false
                }
                None => true,
            }
        });
        if self.first.is_none() {
            self.first = Some(w);
        } else {
            self.more.push(w);
        }
    }

    /// Stops indexing `window` by page; its mappings stay recorded.
    pub(crate) fn forget_pages(&mut self, window: IovaRange) {
        let w = if self.first.as_ref().is_some_and(|w| w.range == window) {
            // The next window, if any, moves up.
            let next = (!self.more.is_empty()).then(|| self.more.remove(0));
            std::mem::replace(&mut self.first, next)
        } else {
            self.more
                .iter()
                .position(|w| w.range == window)
                .map(|at| self.more.remove(at))
        };
        for m in w.iter().flat_map(PageWindow::iter) {
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
        windowed.expect_pages(r(0x10_0000, 0x10000), PAGE, true);
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
                let m = mapping(iova, len);
                mirror.insert(m);
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
            let m = mapping(0x40_0000, 0x1000);
            mirror.insert(m);
            mirror.remove_unmapped(r(0x50_0000, 0x1000), 0);
            assert_eq!(mirror.len(), 1);
        }
    }

    #[test]
    fn names_the_mapping_in_the_way() {
        for mut mirror in mirrors() {
            for m in [
                mapping(0x10_0000, 0x4000),
                mapping(0x10_8000, 0x1000),
                mapping(0x20_0000, 0x1000),
            ] {
                mirror.insert(m);
            }
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
        for m in [mapping(0x10_2000, 0x1000), mapping(0x8000, 0x1000)] {
            mirror.insert(m);
        }
        let before = mirror.sorted();
        assert_eq!(
            before,
            vec![mapping(0x8000, 0x1000), mapping(0x10_2000, 0x1000)]
        );
        assert_eq!(
            mirror.by_start.len(),
            1,
            "the window page is indexed by page"
        );
        mirror.forget_pages(r(0x10_0000, 0x10000));
        assert!(mirror.first.is_none());
        assert_eq!(mirror.by_start.len(), 2);
        assert_eq!(mirror.sorted(), before);
        // Announcing it again moves the page back in.
        mirror.expect_pages(r(0x10_0000, 0x10000), PAGE, true);
        assert!(mirror.first.is_some());
        assert_eq!(mirror.by_start.len(), 1);
        assert_eq!(mirror.len(), 2);
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
        mirror.expect_pages(r(0x10_0800, 0x10000), PAGE, true);
        mirror.expect_pages(r(0x10_0000, (MAX_WINDOW_PAGES + 1) * PAGE), PAGE, true);
        mirror.expect_pages(r(0x10_0000, 0x10000), 0x1800, true);
        assert!(mirror.first.is_none());
        mirror.expect_pages(r(0x10_0000, 0x10000), PAGE, true);
        mirror.expect_pages(r(0x10_8000, 0x10000), PAGE, true);
        assert!(mirror.more.is_empty(), "overlapping announcement ignored");
        // A second, separate window is indexed too, and outlives the first.
        mirror.expect_pages(r(0x20_0000, 0x10000), PAGE, true);
        assert_eq!(mirror.more.len(), 1);
        for iova in [0x10_1000, 0x20_1000] {
            mirror.insert(mapping(iova, PAGE));
        }
        assert!(
            mirror.by_start.is_empty(),
            "both pages indexed in their windows"
        );
        mirror.forget_pages(r(0x10_0000, 0x10000));
        assert_eq!(
            mirror.first.as_ref().map(|w| w.range),
            Some(r(0x20_0000, 0x10000))
        );
        assert_eq!(mirror.by_start.len(), 1);
        assert_eq!(mirror.len(), 2);
        mirror.remove_unmapped(r(0x20_1000, PAGE), PAGE);
        mirror.remove_unmapped(r(0x10_1000, PAGE), PAGE);
        assert_eq!(mirror.len(), 0);
        assert!(mirror.sorted().is_empty());
    }
}
