//! The device's DMA into a UML guest: its memory mapped through the IOMMU with IOVA =
//! UML physical address (identity), because UML programs its physical addresses into
//! devices.
//!
//! UML sends its memory in SET_MEM_TABLE as one fd-backed region (the part of its RAM
//! file after its own image). This module decides what of that table is mapped: each
//! region's fd is mapped once more ([`FdMemory`], which refuses a region reaching past
//! the end of its file), and [`DmaMappings::map_identity`] maps its whole pages, rounded
//! inwards, so a mapping never reaches host memory outside what UML shared. The table
//! holds each mapping's memory until the mapping is gone.

use std::sync::Arc;

use dma::{DmaBacking, DmaError, DmaMapper, DmaMappings, FdMemory, GuestPhysAddr};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// What is mapped for the current guest, with the memory behind it.
#[derive(Default)]
pub(super) struct GuestDma {
    /// Made on the first memory table, with the frontend's mapper.
    mappings: Option<DmaMappings<Arc<dyn DmaMapper>>>,
}

/// One region of a memory table: where UML has it, and this process's own mapping of
/// its fd.
struct TableRegion {
    gpa: u64,
    len: u64,
    memory: Arc<dyn DmaBacking>,
}

/// Maps the fd behind each region of `memory`, refusing the table if one has no fd or
/// reaches past the end of its file (touching such a page, the device through the
/// IOMMU or this process reading a descriptor, would fault; in this process that is a
/// SIGBUS, and vm-memory maps such regions without checking).
fn table_regions(memory: &GuestMemoryMmap) -> Result<Vec<TableRegion>, String> {
    memory
        .iter()
        .map(|region| {
            let gpa = region.start_addr().0;
            let len = region.len();
            let file = region
                .file_offset()
                .ok_or_else(|| format!("region at UML physical {gpa:#x} has no fd"))?;
            let memory = FdMemory::map(file.file(), file.start(), len, true).map_err(|e| {
                format!("region at UML physical {gpa:#x} (+{len:#x}): {e}; refused")
            })?;
            Ok(TableRegion {
                gpa,
                len,
                memory: Arc::new(memory),
            })
        })
        .collect()
}

impl GuestDma {
    /// Bytes mapped now.
    pub(super) fn mapped_bytes(&self) -> u64 {
        self.mappings.as_ref().map_or(0, |m| m.bytes())
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
        let regions = table_regions(memory)?;
        let mappings = self
            .mappings
            .get_or_insert_with(|| DmaMappings::new(mapper.clone()));
        let mut mapped = Ok(());
        for region in regions {
            match mappings.map_identity(GuestPhysAddr(region.gpa), region.memory, 0, region.len)
            {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(
                    gpa = region.gpa,
                    len = region.len,
                    "UML memory region has no whole page to map for DMA (its guest and host addresses are not page-aligned alike); the device cannot reach it"
                ),
                Err(e) => {
                    mapped = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = mapped {
            let (first, total) = memory.iter().fold((u64::MAX, 0), |(first, total), r| {
                (first.min(r.start_addr().0), total + r.len())
            });
            // Best effort: the refusal is the error worth reporting.
            let _ = self.unmap_all(mapper);
            return Err(format!(
                "mapping UML memory ({total:#x} bytes from UML physical {first:#x}) for DMA: {e}"
            ));
        }
        Ok(self.mapped_bytes())
    }

    /// Unmap everything; returns the bytes unmapped. Unmaps what it can even if one
    /// range fails, and reports the first failure.
    pub(super) fn unmap_all(&mut self, _mapper: &Arc<dyn DmaMapper>) -> Result<u64, DmaError> {
        self.mappings.as_mut().map_or(Ok(0), DmaMappings::unmap_all)
    }
}
