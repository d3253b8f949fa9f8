//! The memory a guest has registered for DMA, and nothing else.
//!
//! A guest's VMM shares the guest's RAM (a memfd, mapped into this process) and says
//! where it sits in guest-physical space. Every guest DMA request is translated through
//! this table; a request that is not wholly inside it is refused. That is what keeps a
//! guest from pointing a device at host memory it does not own.
//!
//! Regions must be page-aligned (base, length and host address): mappings are made in
//! whole pages, and an unaligned region would let a page-rounded mapping reach the
//! host memory next to it.
//!
//! A guest has a handful of regions, looked up on every request and changed rarely,
//! so they are a sorted array (the first inline, beside the rest of the policy's hot
//! state) rather than a tree.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::address::{GuestPhysAddr, HostVirtAddr};
use crate::error::DmaError;
use crate::memory::DmaBacking;

/// One contiguous piece of guest RAM and the memory behind it in this process.
///
/// The region holds its [`DmaBacking`], so the memory stays mapped while the region is
/// registered and while a policy's mappings reach into it. The policy never
/// dereferences the host address; it hands it to the IOMMU.
#[derive(Clone)]
pub struct GuestMemoryRegion {
    gpa: GuestPhysAddr,
    len: u64,
    vaddr: HostVirtAddr,
    backing: Arc<dyn DmaBacking>,
}

impl std::fmt::Debug for GuestMemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemoryRegion")
            .field("gpa", &self.gpa)
            .field("len", &self.len)
            .field("vaddr", &self.vaddr)
            .finish()
    }
}

impl GuestMemoryRegion {
    /// Guest RAM at `gpa`, held by the whole of `backing`.
    pub fn new(gpa: GuestPhysAddr, backing: Arc<dyn DmaBacking>) -> GuestMemoryRegion {
        let (vaddr, len) = backing.host_range();
        GuestMemoryRegion {
            gpa,
            len,
            vaddr,
            backing,
        }
    }

    /// Guest-physical base.
    pub fn gpa(&self) -> GuestPhysAddr {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region has no bytes ([`GuestMemory::add`] refuses such a region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host virtual address of the region's first byte.
    pub fn vaddr(&self) -> HostVirtAddr {
        self.vaddr
    }

    /// The memory behind the region.
    pub fn backing(&self) -> &Arc<dyn DmaBacking> {
        &self.backing
    }

    /// One past the last guest-physical byte.
    fn gpa_end(&self) -> u64 {
        self.gpa.0 + self.len
    }

    fn describe(&self) -> String {
        format!("[{:#x}, +{:#x})", self.gpa.0, self.len)
    }
}

/// A guest-physical piece of a request and the host memory behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPiece {
    /// Guest-physical address.
    pub gpa: GuestPhysAddr,
    /// Host virtual address of the same byte.
    pub vaddr: HostVirtAddr,
    /// Length in bytes.
    pub len: u64,
}

/// The registered regions of one guest, in guest-physical order; never overlapping.
#[derive(Clone, Debug, Default)]
pub struct GuestMemory {
    regions: SmallVec<[GuestMemoryRegion; 1]>,
}

impl GuestMemory {
    /// No regions.
    pub fn new() -> GuestMemory {
        GuestMemory::default()
    }

    /// Registers a region. It must be non-empty, `page_size`-aligned, not wrap either
    /// address space, and not overlap a registered region in guest-physical space.
    pub fn add(&mut self, region: GuestMemoryRegion, page_size: u64) -> Result<(), DmaError> {
        if region.len == 0 {
            return Err(DmaError::EmptyRange {
                start: region.gpa.0,
            });
        }
        for (what, value) in [
            ("guest region base", region.gpa.0),
            ("guest region length", region.len),
            ("guest region host address", region.vaddr.0),
        ] {
            if value & (page_size - 1) != 0 {
                return Err(DmaError::Misaligned {
                    what,
                    value,
                    align: page_size,
                });
            }
        }
        for base in [region.gpa.0, region.vaddr.0] {
            if base.checked_add(region.len).is_none() {
                return Err(DmaError::RangeOverflow {
                    start: base,
                    len: region.len,
                });
            }
        }
        // The last region starting before the new one ends is the only one that can
        // overlap it: regions are disjoint and sorted.
        let at = self.regions.partition_point(|r| r.gpa.0 < region.gpa_end());
        if let Some(existing) = at.checked_sub(1).map(|i| &self.regions[i]) {
            if existing.gpa_end() > region.gpa.0 {
                return Err(DmaError::RegionOverlap {
                    new: region.describe(),
                    existing: existing.describe(),
                });
            }
        }
        self.regions.insert(at, region);
        Ok(())
    }

    /// Unregisters the region based at `gpa`.
    pub fn remove(&mut self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        match self.index_of(gpa) {
            Some(i) => Ok(self.regions.remove(i)),
            None => Err(DmaError::RegionNotFound { gpa: gpa.0 }),
        }
    }

    /// The region based at `gpa`.
    pub fn get(&self, gpa: GuestPhysAddr) -> Option<&GuestMemoryRegion> {
        self.index_of(gpa).map(|i| &self.regions[i])
    }

    /// All regions, in guest-physical order.
    pub fn regions(&self) -> impl Iterator<Item = &GuestMemoryRegion> {
        self.regions.iter()
    }

    fn index_of(&self, gpa: GuestPhysAddr) -> Option<usize> {
        self.regions.binary_search_by_key(&gpa.0, |r| r.gpa.0).ok()
    }

    /// The region holding the byte at `gpa`, if any.
    #[inline]
    fn holding(&self, gpa: u64) -> Option<&GuestMemoryRegion> {
        let inside = |r: &&GuestMemoryRegion| r.gpa.0 <= gpa && gpa < r.gpa_end();
        if self.regions.len() <= 4 {
            // A guest usually has one or two regions: a scan beats bisecting them.
            return self.regions.iter().find(inside);
        }
        let after = self.regions.partition_point(|r| r.gpa.0 <= gpa);
        Some(&self.regions[after.checked_sub(1)?]).filter(inside)
    }

    /// Whether `[gpa, gpa + len)` is wholly registered.
    pub fn contains(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        self.walk(gpa, len, |_| Ok(())).is_ok()
    }

    /// The host address of `[gpa, gpa + len)` if it lies wholly inside one region
    /// (a range crossing into the next region is `None` here; [`GuestMemory::walk`]
    /// splits it).
    #[inline]
    pub fn host_addr(&self, gpa: GuestPhysAddr, len: u64) -> Option<HostVirtAddr> {
        let region = self.holding(gpa.0)?;
        let end = gpa.0.checked_add(len)?;
        (len > 0 && end <= region.gpa_end())
            .then(|| HostVirtAddr(region.vaddr.0 + (gpa.0 - region.gpa.0)))
    }

    /// The host pieces behind `[gpa, gpa + len)`, split where the request crosses from
    /// one region into the next. Errors unless every byte is registered.
    pub fn host_pieces(&self, gpa: GuestPhysAddr, len: u64) -> Result<Vec<HostPiece>, DmaError> {
        let mut pieces = Vec::with_capacity(1);
        self.walk(gpa, len, |p| {
            pieces.push(p);
            Ok(())
        })?;
        Ok(pieces)
    }

    /// Calls `piece` for each host piece behind `[gpa, gpa + len)`, in order, and
    /// errors unless every byte is registered (pieces before the gap have been passed).
    /// Stops at the first error `piece` returns, and returns it.
    /// The allocation-free form of [`GuestMemory::host_pieces`].
    pub fn walk(
        &self,
        gpa: GuestPhysAddr,
        len: u64,
        mut piece: impl FnMut(HostPiece) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let outside = || DmaError::OutsideGuestMemory { gpa: gpa.0, len };
        if len == 0 || gpa.0.checked_add(len).is_none() {
            return Err(outside());
        }
        let (mut at, end) = (gpa.0, gpa.0 + len);
        while at < end {
            let Some(region) = self.holding(at) else {
                return Err(outside());
            };
            let take = (end - at).min(region.gpa_end() - at);
            piece(HostPiece {
                gpa: GuestPhysAddr(at),
                vaddr: HostVirtAddr(region.vaddr.0 + (at - region.gpa.0)),
                len: take,
            })?;
            at += take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, len: u64, va: u64) -> GuestMemoryRegion {
        // SAFETY: these tests only translate addresses; nothing maps or touches them.
        let fake = unsafe { crate::memory::RawMemory::new(HostVirtAddr(va), len) };
        GuestMemoryRegion::new(GuestPhysAddr(gpa), Arc::new(fake))
    }

    #[test]
    fn translates_inside_and_refuses_outside() {
        let mut mem = GuestMemory::new();
        mem.add(region(0, 0x10_0000, 0x7f00_0000_0000), 0x1000)
            .unwrap();
        let pieces = mem.host_pieces(GuestPhysAddr(0x2010), 0x20).unwrap();
        assert_eq!(
            pieces,
            vec![HostPiece {
                gpa: GuestPhysAddr(0x2010),
                vaddr: HostVirtAddr(0x7f00_0000_2010),
                len: 0x20
            }]
        );
        assert!(matches!(
            mem.host_pieces(GuestPhysAddr(0xf_fff0), 0x20),
            Err(DmaError::OutsideGuestMemory {
                gpa: 0xf_fff0,
                len: 0x20
            })
        ));
        assert!(!mem.contains(GuestPhysAddr(u64::MAX - 1), 4));
        assert!(!mem.contains(GuestPhysAddr(0x10), 0));
    }

    #[test]
    fn splits_across_adjacent_regions() {
        let mut mem = GuestMemory::new();
        mem.add(region(0, 0x2000, 0x10_0000), 0x1000).unwrap();
        mem.add(region(0x2000, 0x2000, 0x50_0000), 0x1000).unwrap();
        let pieces = mem.host_pieces(GuestPhysAddr(0x1800), 0x1000).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(mem.host_addr(GuestPhysAddr(0x1800), 0x1000), None);
        assert_eq!(
            mem.host_addr(GuestPhysAddr(0x1800), 0x800),
            Some(HostVirtAddr(0x10_1800))
        );
        assert_eq!(
            mem.host_addr(GuestPhysAddr(0x2000), 0x2000),
            Some(HostVirtAddr(0x50_0000))
        );
        assert_eq!(mem.host_addr(GuestPhysAddr(0x2000), 0), None);
        assert_eq!(mem.host_addr(GuestPhysAddr(0x4000), 1), None);
        assert_eq!(pieces[0].vaddr, HostVirtAddr(0x10_1800));
        assert_eq!(pieces[1].vaddr, HostVirtAddr(0x50_0000));
        assert_eq!(pieces[0].len + pieces[1].len, 0x1000);
    }

    #[test]
    fn rejects_overlap_and_unaligned_regions() {
        let mut mem = GuestMemory::new();
        mem.add(region(0x10000, 0x10000, 0x10_0000), 0x1000)
            .unwrap();
        assert!(matches!(
            mem.add(region(0x1f000, 0x2000, 0x90_0000), 0x1000),
            Err(DmaError::RegionOverlap { .. })
        ));
        assert!(matches!(
            mem.add(region(0x0, 0x10000 + 0x1000, 0x90_0000), 0x1000),
            Err(DmaError::RegionOverlap { .. })
        ));
        assert!(matches!(
            mem.add(region(0x40800, 0x1000, 0x90_0000), 0x1000),
            Err(DmaError::Misaligned { .. })
        ));
        assert!(matches!(
            mem.add(region(0x40000, 0x1000, 0x90_0800), 0x1000),
            Err(DmaError::Misaligned { .. })
        ));
        mem.add(region(0x20000, 0x1000, 0x90_0000), 0x1000).unwrap();
        assert!(mem.remove(GuestPhysAddr(0x21000)).is_err());
        assert_eq!(mem.remove(GuestPhysAddr(0x20000)).unwrap().len(), 0x1000);
    }

    #[test]
    fn regions_added_in_any_order_are_kept_sorted_and_found() {
        let mut mem = GuestMemory::new();
        for (gpa, va) in [
            (0x30000, 0x30_0000),
            (0x10000, 0x10_0000),
            (0x20000, 0x20_0000),
        ] {
            mem.add(region(gpa, 0x10000, va), 0x1000).unwrap();
        }
        let bases: Vec<u64> = mem.regions().map(|r| r.gpa.0).collect();
        assert_eq!(bases, vec![0x10000, 0x20000, 0x30000]);
        assert!(matches!(
            mem.add(region(0x2f000, 0x1000, 0x90_0000), 0x1000),
            Err(DmaError::RegionOverlap { .. })
        ));
        let pieces = mem.host_pieces(GuestPhysAddr(0x1f000), 0x12000).unwrap();
        let vaddrs: Vec<u64> = pieces.iter().map(|p| p.vaddr.0).collect();
        assert_eq!(vaddrs, vec![0x10_f000, 0x20_0000, 0x30_0000]);
        mem.remove(GuestPhysAddr(0x20000)).unwrap();
        assert!(!mem.contains(GuestPhysAddr(0x1f000), 0x2000));
        assert!(mem.contains(GuestPhysAddr(0x30000), 0x10000));
        assert!(!mem.contains(GuestPhysAddr(0x40000), 1));
        assert!(!mem.contains(GuestPhysAddr(0xf000), 1));
        assert!(mem.get(GuestPhysAddr(0x30000)).is_some());
        assert!(mem.get(GuestPhysAddr(0x31000)).is_none());
    }

    #[test]
    fn many_regions_are_bisected() {
        let mut mem = GuestMemory::new();
        // Eight regions of 64 KiB with 64 KiB holes, added out of order.
        for i in [5u64, 0, 7, 2, 6, 1, 4, 3] {
            mem.add(
                region(i * 0x20000, 0x10000, 0x100_0000 + i * 0x10000),
                0x1000,
            )
            .unwrap();
        }
        for i in 0..8u64 {
            let base = i * 0x20000;
            assert_eq!(
                mem.host_addr(GuestPhysAddr(base + 0x800), 0x10),
                Some(HostVirtAddr(0x100_0000 + i * 0x10000 + 0x800))
            );
            assert!(
                mem.host_addr(GuestPhysAddr(base + 0x10000), 1).is_none(),
                "hole"
            );
            assert!(mem.contains(GuestPhysAddr(base), 0x10000));
        }
        assert!(mem.host_addr(GuestPhysAddr(8 * 0x20000), 1).is_none());
    }
}
