//! Identity mapping: the guest's memory is mapped once, IOVA = guest-physical address.
//!
//! For guests whose DMA addresses are their physical addresses (UML, a guest without a
//! vIOMMU). Mapping happens when a region is registered, so `map_sg` and `unmap_sg`
//! only check that the request lies in registered memory; they never reach the mapper.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::{GuestMemory, GuestMemoryRegion};
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper, DmaMapping};
use crate::policy::DmaPolicy;
use crate::sg_list::{BusSgList, GuestSgList};

/// Maps whole guest memory regions at IOVA = guest-physical address.
#[derive(Debug)]
pub struct IdentityPolicy<M> {
    mapper: M,
    iovas: Arc<IovaAllocator>,
    memory: Mutex<GuestMemory>,
}

impl<M: DmaMapper> IdentityPolicy<M> {
    /// A policy mapping through `mapper`. The guest-physical ranges of its regions are
    /// reserved in `iovas`, which must describe the IOMMU's usable windows and be shared
    /// with every other policy on the same mapper.
    pub fn new(mapper: M, iovas: Arc<IovaAllocator>) -> IdentityPolicy<M> {
        IdentityPolicy {
            mapper,
            iovas,
            memory: Mutex::new(GuestMemory::new()),
        }
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    fn memory(&self) -> MutexGuard<'_, GuestMemory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<M: DmaMapper> DmaPolicy for IdentityPolicy<M> {
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        let mut memory = self.memory();
        memory.add(region, self.mapper.page_size())?;
        let rollback = |memory: &mut GuestMemory| {
            // Just added above, so it is there to remove.
            let _ = memory.remove(region.gpa);
        };
        // Reserving the IOVAs first refuses guest RAM placed over an IOMMU hole (the
        // MSI window) before anything is mapped.
        let range = match IovaRange::new(Iova(region.gpa.0), region.len)
            .and_then(|r| self.iovas.alloc_at(r))
        {
            Ok(range) => range,
            Err(err) => {
                rollback(&mut memory);
                return Err(err);
            }
        };
        let mapping = DmaMapping {
            range,
            vaddr: region.vaddr,
            access: DmaAccess::ReadWrite,
        };
        if let Err(err) = self.mapper.map(&mapping) {
            rollback(&mut memory);
            let _ = self.iovas.free(range);
            return Err(err);
        }
        Ok(())
    }

    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        let mut memory = self.memory();
        let region = *memory
            .get(gpa)
            .ok_or(DmaError::RegionNotFound { gpa: gpa.0 })?;
        let range = IovaRange::new(Iova(region.gpa.0), region.len)?;
        self.mapper.unmap(range)?;
        self.iovas.free(range)?;
        memory.remove(gpa)
    }

    fn map_sg(&self, sg: &GuestSgList, _access: DmaAccess) -> Result<BusSgList, DmaError> {
        let memory = self.memory();
        let mut bus = BusSgList::new();
        for seg in sg.segments() {
            if !memory.contains(seg.addr, seg.len) {
                return Err(DmaError::OutsideGuestMemory {
                    gpa: seg.addr.0,
                    len: seg.len,
                });
            }
            bus.push(Iova(seg.addr.0), seg.len)?;
        }
        Ok(bus)
    }

    fn unmap_sg(&self, bus: &BusSgList) -> Result<(), DmaError> {
        let memory = self.memory();
        for seg in bus.segments() {
            if !memory.contains(GuestPhysAddr(seg.addr.0), seg.len) {
                return Err(DmaError::UnknownBusAddress {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
        }
        Ok(())
    }
}
