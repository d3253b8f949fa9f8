//! One-page requests on a short path.
//!
//! Most requests are one buffer inside one page (a network frame, a 4 KiB block). For
//! those the table leases a window of IOVA pages from the shared allocator, once, and
//! hands its pages out as slots: the next request takes the most recently freed slot,
//! and an unmap finds its request by arithmetic on the bus address. Neither takes the
//! allocator's lock or probes a hash table.
//!
//! Each slot is one word, which says what the slot holds and, for a free slot, which
//! free slot comes next: taking or returning a slot touches that word and the list
//! head, nothing else. Under emulation (a TCG guest, where every cache line a request
//! touches after the kernel's work costs a miss) that matters as much as instructions.
//!
//! A slot is free, reserved (a map of it is under way), mapped, or taken (its unmap is
//! under way or deferred). It returns to the free list only when its map failed
//! (nothing was mapped) or its unmap succeeded, so, as with any IOVA, a page is never
//! handed out again while the device may still reach the page it mapped before. A slot
//! whose unmap failed is never returned: its page stays out of use.

use crate::address::GuestPhysAddr;
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::{IovaAllocator, IovaLease};

/// Pages in the window: a device queue's worth of one-page requests in flight (NIC
/// rings and storage queues run to hundreds or a few thousand); 4 MiB of IOVA space
/// with 4 KiB pages. Requests beyond it take the general path.
pub(crate) const WINDOW_PAGES: u32 = 1024;

/// A slot's word: `gpa | MAPPED` for a mapped slot (guest pages are page-aligned, so
/// the low bits are free), `next << 2 | FREE` for a free one, `OUT` for one reserved or
/// taken.
const MAPPED: u64 = 1;
const FREE: u64 = 2;
const OUT: u64 = 0;
/// The end of the free list.
const NO_SLOT: u32 = u32::MAX;

/// The one-page slots of one policy; see the module documentation.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct PageSlots {
    window: Option<Window>,
    /// The window was asked for (it is asked for once, at the first one-page request).
    asked: bool,
}

/// What every request reads, in one cache line (repr(C), 48 bytes); the lease, read
/// only when the window is handed back, boxed.
#[derive(Debug)]
#[repr(C)]
struct Window {
    slots: Box<[u64]>,
    base: u64,
    page_shift: u32,
    /// The first free slot, or `NO_SLOT`.
    free_head: u32,
    free_count: u32,
    mapped_count: u32,
    lease: Box<IovaLease>,
}

impl Window {
    /// The index of the slot whose page wholly holds `[addr, addr + len)`.
    fn slot_of(&self, addr: u64, len: u64) -> Option<usize> {
        let offset = addr.checked_sub(self.base)?;
        let page_mask = (1u64 << self.page_shift) - 1;
        let fits = len > 0 && (offset & page_mask).checked_add(len)? <= page_mask + 1;
        let index = usize::try_from(offset >> self.page_shift).ok()?;
        (fits && index < self.slots.len()).then_some(index)
    }

    #[inline]
    fn range_of(&self, slot: u32) -> IovaRange {
        let page = 1u64 << self.page_shift;
        // Inside the leased window, so neither overflows nor is empty.
        IovaRange::new(Iova(self.base + (u64::from(slot) << self.page_shift)), page)
            .unwrap_or(self.lease.range())
    }

    fn push_free(&mut self, slot: u32) {
        self.slots[slot as usize] = u64::from(self.free_head) << 2 | FREE;
        self.free_head = slot;
        self.free_count += 1;
    }
}

impl PageSlots {
    /// A free slot of `page_size` bytes and its IOVA, marked reserved; `None` when the
    /// window is full, could not be leased, or holds pages of another size. The first
    /// call leases the window and passes it to `leased`.
    #[inline(always)]
    pub(crate) fn reserve(
        &mut self,
        iovas: &IovaAllocator,
        page_size: u64,
        leased: impl FnOnce(IovaRange),
    ) -> Option<(u32, Iova)> {
        if !self.asked {
            self.ask(iovas, page_size, leased);
        }
        let window = self.window.as_mut()?;
        if 1u64 << window.page_shift != page_size || window.free_head == NO_SLOT {
            return None;
        }
        let slot = window.free_head;
        let word = std::mem::replace(&mut window.slots[slot as usize], OUT);
        window.free_head = (word >> 2) as u32;
        window.free_count -= 1;
        let iova = Iova(window.base + (u64::from(slot) << window.page_shift));
        Some((slot, iova))
    }

    /// Leases the window, once; out of line, so that the per-request path stays small.
    #[cold]
    #[inline(never)]
    fn ask(&mut self, iovas: &IovaAllocator, page_size: u64, leased: impl FnOnce(IovaRange)) {
        self.asked = true;
        self.window = Self::lease_window(iovas, page_size);
        if let Some(window) = &self.window {
            leased(window.lease.range());
        }
    }

    fn lease_window(iovas: &IovaAllocator, page_size: u64) -> Option<Window> {
        // Slot words keep flags in the two low bits of a page-aligned address.
        if page_size < 4 {
            return None;
        }
        let bytes = u64::from(WINDOW_PAGES).checked_mul(page_size)?;
        let lease = iovas.lease(bytes, page_size).ok()?;
        let mut window = Window {
            slots: vec![OUT; WINDOW_PAGES as usize].into_boxed_slice(),
            base: lease.range().start().0,
            page_shift: page_size.trailing_zeros(),
            free_head: NO_SLOT,
            free_count: 0,
            mapped_count: 0,
            lease: Box::new(lease),
        };
        // Slot 0 on top: the lowest IOVAs are used first.
        for slot in (0..WINDOW_PAGES).rev() {
            window.push_free(slot);
        }
        Some(window)
    }

    /// A reserved slot whose map failed: nothing was mapped, so it is free again.
    #[inline(always)]
    pub(crate) fn unreserve(&mut self, slot: u32) {
        if let Some(window) = self.window.as_mut() {
            window.push_free(slot);
        }
    }

    /// A reserved slot now maps the guest page at `gpa`.
    #[inline(always)]
    pub(crate) fn fill(&mut self, slot: u32, gpa: GuestPhysAddr) {
        if let Some(window) = self.window.as_mut() {
            window.slots[slot as usize] = gpa.0 | MAPPED;
            window.mapped_count += 1;
        }
    }

    /// The mapped slot whose page wholly holds `[addr, addr + len)`.
    #[inline(always)]
    pub(crate) fn holder(&self, addr: u64, len: u64) -> Option<u32> {
        let window = self.window.as_ref()?;
        let index = window.slot_of(addr, len)?;
        (window.slots[index] & MAPPED != 0).then_some(index as u32)
    }

    /// The IOVA range of a mapped slot.
    pub(crate) fn mapped_range(&self, slot: u32) -> Option<IovaRange> {
        let window = self.window.as_ref()?;
        let word = window.slots.get(slot as usize)?;
        (*word & MAPPED != 0).then(|| window.range_of(slot))
    }

    /// Takes a mapped slot out of use for its unmap; returns its IOVA range.
    #[inline(always)]
    pub(crate) fn take(&mut self, slot: u32) -> Option<IovaRange> {
        let window = self.window.as_mut()?;
        let word = window.slots.get_mut(slot as usize)?;
        if *word & MAPPED == 0 {
            return None;
        }
        *word = OUT;
        window.mapped_count -= 1;
        Some(window.range_of(slot))
    }

    /// A taken slot whose unmap succeeded: free for the next request.
    #[inline(always)]
    pub(crate) fn free(&mut self, slot: u32) {
        if let Some(window) = self.window.as_mut() {
            window.push_free(slot);
        }
    }

    /// Number of mapped slots.
    pub(crate) fn mapped_count(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.mapped_count as usize)
    }

    /// The leased window, if any.
    pub(crate) fn window(&self) -> Option<IovaRange> {
        self.window.as_ref().map(|w| w.lease.range())
    }

    /// The guest pages the mapped slots map.
    pub(crate) fn mapped_pages(&self) -> impl Iterator<Item = GuestPhysAddr> + '_ {
        self.window.iter().flat_map(|w| {
            w.slots
                .iter()
                .filter(|&&word| word & MAPPED != 0)
                .map(|&word| GuestPhysAddr(word & !MAPPED))
        })
    }

    /// The window's lease, if every slot is free (none is mapped, reserved, or lost to a
    /// failed unmap), so that its IOVAs can go back to the allocator.
    pub(crate) fn into_idle_lease(self) -> Option<IovaLease> {
        let window = self.window?;
        (window.free_count == WINDOW_PAGES).then_some(*window.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    fn allocator() -> IovaAllocator {
        IovaAllocator::new(&[IovaRange::new(Iova(0x100_0000), 0x100_0000).unwrap()]).unwrap()
    }

    #[test]
    fn a_slot_is_reused_only_after_it_was_freed() {
        let iovas = allocator();
        let mut slots = PageSlots::default();
        let (a, iova_a) = slots.reserve(&iovas, PAGE, |_| {}).unwrap();
        slots.fill(a, GuestPhysAddr(0x5000));
        let (b, iova_b) = slots.reserve(&iovas, PAGE, |_| {}).unwrap();
        assert_ne!(iova_a, iova_b);
        slots.unreserve(b);
        // The unreserved slot comes back first; the mapped one does not.
        assert_eq!(slots.reserve(&iovas, PAGE, |_| {}).unwrap().1, iova_b);
        assert_eq!(slots.holder(iova_a.0 + 0x10, 0x20), Some(a));
        let range = slots.take(a).unwrap();
        assert_eq!(range, IovaRange::new(iova_a, PAGE).unwrap());
        assert_eq!(slots.holder(iova_a.0, 1), None, "taken: no longer found");
        assert!(slots.take(a).is_none());
        for _ in 0..(WINDOW_PAGES - 2) {
            let got = slots.reserve(&iovas, PAGE, |_| {}).unwrap().1;
            assert_ne!(got, iova_a, "handed out before its unmap finished");
        }
        assert!(slots.reserve(&iovas, PAGE, |_| {}).is_none(), "window full");
        slots.free(a);
        assert_eq!(slots.reserve(&iovas, PAGE, |_| {}).unwrap().1, iova_a);
    }

    #[test]
    fn holder_needs_the_whole_segment_inside_a_mapped_page() {
        let iovas = allocator();
        let mut slots = PageSlots::default();
        let (s, iova) = slots.reserve(&iovas, PAGE, |_| {}).unwrap();
        assert_eq!(slots.holder(iova.0, 1), None, "reserved is not mapped");
        slots.fill(s, GuestPhysAddr(0));
        assert_eq!(slots.holder(iova.0, PAGE), Some(s));
        assert_eq!(
            slots.holder(iova.0 + 1, PAGE),
            None,
            "runs into the next page"
        );
        assert_eq!(slots.holder(iova.0, 0), None);
        assert_eq!(slots.holder(iova.0 - 1, 1), None);
        assert_eq!(slots.holder(iova.0 + PAGE, 1), None);
        assert_eq!(slots.holder(u64::MAX, 1), None);
        assert_eq!(slots.holder(iova.0 + 0xfff, u64::MAX), None);
        assert_eq!(slots.mapped_count(), 1);
        assert_eq!(
            slots.mapped_pages().collect::<Vec<_>>(),
            vec![GuestPhysAddr(0)]
        );
    }

    #[test]
    fn the_window_goes_back_only_when_idle() {
        let iovas = allocator();
        let mut slots = PageSlots::default();
        let (s, _) = slots.reserve(&iovas, PAGE, |_| {}).unwrap();
        slots.fill(s, GuestPhysAddr(0));
        slots.take(s).unwrap();
        // Taken but never freed (its unmap failed): the window is kept.
        assert!(slots.into_idle_lease().is_none());
        let mut slots = PageSlots::default();
        let (s, _) = slots.reserve(&iovas, PAGE, |_| {}).unwrap();
        slots.unreserve(s);
        let lease = slots.into_idle_lease().unwrap();
        iovas.free_lease(lease).unwrap();
    }

    #[test]
    fn no_window_means_no_slots() {
        let tiny =
            IovaAllocator::new(&[IovaRange::new(Iova(0x10_0000), 8 * PAGE).unwrap()]).unwrap();
        let mut slots = PageSlots::default();
        assert!(slots.reserve(&tiny, PAGE, |_| {}).is_none());
        assert_eq!(tiny.allocation_count(), 0);
        let iovas = allocator();
        let mut slots = PageSlots::default();
        assert!(slots.reserve(&iovas, PAGE, |_| {}).is_some());
        assert!(
            slots.reserve(&iovas, 2 * PAGE, |_| {}).is_none(),
            "other page size"
        );
    }
}
