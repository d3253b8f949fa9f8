//! The device's DMA into a UML guest: its memory mapped through the IOMMU with IOVA =
//! UML physical address (identity), because UML programs its physical addresses into
//! devices.
//!
//! UML sends its memory in SET_MEM_TABLE as one fd-backed region (the part of its RAM
//! file after its own image). Each region is mapped in whole pages, rounded inwards, so
//! a mapping never reaches host memory outside what UML shared.

use std::sync::Arc;

use dma::{DmaAccess, DmaError, DmaMapper, DmaMapping, HostVirtAddr, Iova, IovaRange};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// What is mapped for the current guest, and the memory kept alive behind it.
#[derive(Default)]
pub(super) struct GuestDma {
    mapped: Vec<IovaRange>,
    /// The mmap'd regions behind `mapped`: kept until they are unmapped, so the IOMMU
    /// never points at memory this process has let go of.
    memory: Option<GuestMemoryMmap>,
}

/// One region's page-aligned identity mapping, or why it has none.
fn identity_mapping(gpa: u64, len: u64, vaddr: u64, page: u64) -> Option<DmaMapping> {
    let start = gpa.checked_next_multiple_of(page)?;
    let end = gpa.checked_add(len)? / page * page;
    let shifted = vaddr.checked_add(start - gpa)?;
    if end <= start || !shifted.is_multiple_of(page) {
        return None;
    }
    DmaMapping::new(
        Iova(start),
        HostVirtAddr(shifted),
        end - start,
        DmaAccess::ReadWrite,
    )
    .ok()
}

/// Refuse regions that reach past the end of their file: touching such a page (the
/// device through the IOMMU, or this process reading a descriptor) would fault, and in
/// this process that is a SIGBUS. vm-memory maps them without checking.
fn check_backed(memory: &GuestMemoryMmap) -> Result<(), String> {
    for region in memory.iter() {
        let gpa = region.start_addr().0;
        let Some(file) = region.file_offset() else {
            continue;
        };
        let size = file
            .file()
            .metadata()
            .map_err(|e| format!("region at {gpa:#x}: cannot stat its fd: {e}"))?
            .len();
        let end = file.start().checked_add(region.len());
        if end.is_none_or(|end| end > size) {
            return Err(format!(
                "region at UML physical {gpa:#x} (+{:#x}) reaches past the end of its {size:#x}-byte file (offset {:#x}); refused",
                region.len(),
                file.start()
            ));
        }
    }
    Ok(())
}

impl GuestDma {
    /// Bytes mapped now.
    pub(super) fn mapped_bytes(&self) -> u64 {
        self.mapped.iter().map(|r| r.len()).sum()
    }

    /// Map `memory` (a new memory table) in place of what was mapped. All or nothing:
    /// on error nothing of the new table is mapped (the old one is gone either way).
    pub(super) fn map(
        &mut self,
        mapper: &Arc<dyn DmaMapper>,
        memory: &GuestMemoryMmap,
    ) -> Result<u64, String> {
        self.unmap_all(mapper)
            .map_err(|e| format!("unmapping the previous memory table: {e}"))?;
        check_backed(memory)?;
        let page = mapper.page_size();
        let mut mappings = Vec::new();
        for region in memory.iter() {
            let gpa = region.start_addr().0;
            let len = region.len();
            let vaddr = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| format!("region at {gpa:#x}: no host address: {e}"))?
                as u64;
            match identity_mapping(gpa, len, vaddr, page) {
                Some(m) => mappings.push(m),
                None => tracing::warn!(
                    gpa,
                    len,
                    "UML memory region has no whole page to map for DMA (its guest and host addresses are not page-aligned alike); the device cannot reach it"
                ),
            }
        }
        mapper.map_batch(&mappings).map_err(|e| {
            let first = mappings.first().map_or(0, |m| m.iova().0);
            let total: u64 = mappings.iter().map(|m| m.len()).sum();
            format!(
                "mapping UML memory ({total:#x} bytes from UML physical {first:#x}) for DMA: {e}"
            )
        })?;
        self.mapped = mappings.iter().map(|m| m.range).collect();
        self.memory = Some(memory.clone());
        Ok(self.mapped_bytes())
    }

    /// Unmap everything; returns the bytes unmapped. Unmaps what it can even if one
    /// range fails, and reports the first failure.
    pub(super) fn unmap_all(&mut self, mapper: &Arc<dyn DmaMapper>) -> Result<u64, DmaError> {
        let mut total = 0;
        let mut first_error = None;
        for range in self.mapped.drain(..) {
            match mapper.unmap(range) {
                Ok(n) => total += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.memory = None;
        first_error.map_or(Ok(total), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_mapped_in_whole_pages_inside_them() {
        let m = identity_mapping(0x1000, 0x3000, 0x7f00_0000_1000, 0x1000).unwrap();
        assert_eq!(
            (m.iova().0, m.len(), m.vaddr.0),
            (0x1000, 0x3000, 0x7f00_0000_1000)
        );
        // UML's region starts after its image, not always on a page: round inwards.
        let m = identity_mapping(0x1800, 0x3000, 0x7f00_0000_1800, 0x1000).unwrap();
        assert_eq!(
            (m.iova().0, m.len(), m.vaddr.0),
            (0x2000, 0x2000, 0x7f00_0000_2000)
        );
        // Guest and host offsets within a page differ: an identity map would expose
        // the neighbouring host bytes.
        assert!(identity_mapping(0x1000, 0x3000, 0x7f00_0000_1800, 0x1000).is_none());
        assert!(identity_mapping(0x1800, 0x400, 0x7f00_0000_1800, 0x1000).is_none());
        assert!(identity_mapping(u64::MAX - 0xfff, 0x2000, 0x1000, 0x1000).is_none());
    }
}
