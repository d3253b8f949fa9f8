//! The boundary between DMA policy and the IOMMU.
//!
//! Everything above this trait decides *which* host memory a device may reach at *which*
//! IOVA; everything below it (udriver's VFIO container, the recording mapper in tests)
//! only carries that out. The trait follows VFIO type1v2 semantics so that the VFIO
//! backend is a thin ioctl wrapper:
//!
//! - `iova`, `vaddr` and `len` are multiples of the IOMMU page size;
//! - a map that overlaps an existing mapping fails;
//! - an unmap removes every mapping that lies wholly inside the range and fails if it
//!   would split one; unmapping a range with nothing in it succeeds and removes 0 bytes.
//!
//! Methods take `&self`: one mapper (one container) is shared by every device and
//! thread that uses it, so implementations synchronise internally.

use std::sync::Arc;

use crate::address::HostVirtAddr;
use crate::error::DmaError;
use crate::iova::{Iova, IovaRange};

/// The smallest IOMMU page size on every platform udrv targets.
pub const PAGE_SIZE: u64 = 4096;

/// What the device may do with a mapping, from the device's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaAccess {
    /// The device reads host memory (e.g. a TX buffer): VFIO_DMA_MAP_FLAG_READ.
    DeviceReads,
    /// The device writes host memory (e.g. an RX buffer): VFIO_DMA_MAP_FLAG_WRITE.
    DeviceWrites,
    /// Both (descriptor rings).
    ReadWrite,
}

impl DmaAccess {
    /// Whether the device may read the memory.
    pub const fn device_reads(self) -> bool {
        matches!(self, DmaAccess::DeviceReads | DmaAccess::ReadWrite)
    }

    /// Whether the device may write the memory.
    pub const fn device_writes(self) -> bool {
        matches!(self, DmaAccess::DeviceWrites | DmaAccess::ReadWrite)
    }
}

/// One IOMMU mapping: the IOVA range `range` translates to host memory at `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaMapping {
    /// Device-visible addresses.
    pub range: IovaRange,
    /// Host virtual address the range starts at.
    pub vaddr: HostVirtAddr,
    /// Permitted device accesses.
    pub access: DmaAccess,
}

impl DmaMapping {
    /// A mapping of `len` bytes at `iova` to `vaddr`.
    pub fn new(
        iova: Iova,
        vaddr: HostVirtAddr,
        len: u64,
        access: DmaAccess,
    ) -> Result<DmaMapping, DmaError> {
        if vaddr.0.checked_add(len.saturating_sub(1)).is_none() {
            return Err(DmaError::RangeOverflow {
                start: vaddr.0,
                len,
            });
        }
        Ok(DmaMapping {
            range: IovaRange::new(iova, len)?,
            vaddr,
            access,
        })
    }

    /// First IOVA.
    pub const fn iova(&self) -> Iova {
        self.range.start()
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.range.len()
    }

    /// Always false: a mapping is never empty.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Errors unless iova, vaddr and length are multiples of `page_size`.
    pub fn check_alignment(&self, page_size: u64) -> Result<(), DmaError> {
        self.range.check_alignment(page_size)?;
        if !self.vaddr.0.is_multiple_of(page_size) {
            return Err(DmaError::Misaligned {
                what: "vaddr",
                value: self.vaddr.0,
                align: page_size,
            });
        }
        Ok(())
    }

    /// The host address that `iova` translates to, if it lies in this mapping.
    pub fn translate(&self, iova: Iova) -> Option<HostVirtAddr> {
        if self.range.contains(iova) {
            Some(HostVirtAddr(self.vaddr.0 + (iova.0 - self.range.start().0)))
        } else {
            None
        }
    }
}

/// Programs an IOMMU: map host memory at an IOVA, unmap IOVA ranges.
///
/// Mapping is `unsafe`: once mapped, a device reaches the host memory behind the
/// compiler's back, for as long as the mapping lasts, whatever becomes of that memory
/// in this process. Unmapping only takes access away, so it is safe.
///
/// # Safety
///
/// A caller of [`DmaMapper::map`] or [`DmaMapper::map_batch`] promises, for every
/// mapping passed, that the host memory `[vaddr, vaddr + len)` is mapped in this
/// process and stays mapped and reserved for the device's DMA — not unmapped, not
/// remapped, not reused for anything the device must not reach, not referenced by
/// Rust code in a way the device's writes would break — until the IOVA range is
/// unmapped again (or the mapper, and with it the IOMMU domain, is gone). A
/// [`DmaBacking`](crate::memory::DmaBacking) held until the unmap keeps that promise;
/// [`DmaMappings`](crate::mappings::DmaMappings) is the safe table that does so.
pub trait DmaMapper: Send + Sync {
    /// The IOMMU page size: the granularity of every IOVA, vaddr and length passed in.
    fn page_size(&self) -> u64 {
        PAGE_SIZE
    }

    /// Maps `mapping.range` to host memory at `mapping.vaddr`, pinning that memory.
    ///
    /// # Safety
    ///
    /// The memory must stay mapped and owned for the device's DMA until the range is
    /// unmapped: see the trait's safety section.
    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError>;

    /// Removes every mapping lying wholly within `range`; returns the bytes unmapped.
    /// When this returns, the device can no longer reach those pages.
    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError>;

    /// Maps several ranges. All or nothing: if one fails, those already mapped by this
    /// call are unmapped again and the first error is returned. A backend that can
    /// submit many mappings at once overrides this.
    ///
    /// # Safety
    ///
    /// As for [`DmaMapper::map`], for every mapping in `mappings`.
    unsafe fn map_batch(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        for (done, mapping) in mappings.iter().enumerate() {
            // SAFETY: the caller promised this for every mapping of the batch.
            if let Err(err) = unsafe { self.map(mapping) } {
                for undo in &mappings[..done] {
                    // Best effort: the original error is the one worth reporting, and
                    // these ranges were mapped by us a moment ago.
                    let _ = self.unmap(undo.range);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Unmaps several ranges, stopping at the first error; returns the bytes unmapped.
    fn unmap_batch(&self, ranges: &[IovaRange]) -> Result<u64, DmaError> {
        let mut total = 0;
        for range in ranges {
            total += self.unmap(*range)?;
        }
        Ok(total)
    }

    /// A hint: the caller will map and unmap single pages of `page_size` bytes inside
    /// `window`, many times over (a policy's window of one-page slots). A backend that
    /// keeps a record of its mappings may index the window directly. It changes nothing
    /// about which maps and unmaps succeed; the default ignores it.
    fn expect_pages(&self, _window: IovaRange, _page_size: u64) {}

    /// Ends an [`DmaMapper::expect_pages`] hint for `window`.
    fn forget_pages(&self, _window: IovaRange) {}
}

impl<M: DmaMapper + ?Sized> DmaMapper for &M {
    fn page_size(&self) -> u64 {
        (**self).page_size()
    }
    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        // SAFETY: passed on from our caller.
        unsafe { (**self).map(mapping) }
    }
    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        (**self).unmap(range)
    }
    unsafe fn map_batch(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        // SAFETY: passed on from our caller.
        unsafe { (**self).map_batch(mappings) }
    }
    fn unmap_batch(&self, ranges: &[IovaRange]) -> Result<u64, DmaError> {
        (**self).unmap_batch(ranges)
    }
    fn expect_pages(&self, window: IovaRange, page_size: u64) {
        (**self).expect_pages(window, page_size)
    }
    fn forget_pages(&self, window: IovaRange) {
        (**self).forget_pages(window)
    }
}

impl<M: DmaMapper + ?Sized> DmaMapper for Arc<M> {
    fn page_size(&self) -> u64 {
        (**self).page_size()
    }
    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        // SAFETY: passed on from our caller.
        unsafe { (**self).map(mapping) }
    }
    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        (**self).unmap(range)
    }
    unsafe fn map_batch(&self, mappings: &[DmaMapping]) -> Result<(), DmaError> {
        // SAFETY: passed on from our caller.
        unsafe { (**self).map_batch(mappings) }
    }
    fn unmap_batch(&self, ranges: &[IovaRange]) -> Result<u64, DmaError> {
        (**self).unmap_batch(ranges)
    }
    fn expect_pages(&self, window: IovaRange, page_size: u64) {
        (**self).expect_pages(window, page_size)
    }
    fn forget_pages(&self, window: IovaRange) {
        (**self).forget_pages(window)
    }
}
