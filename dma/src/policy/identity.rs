//! Identity mapping: the guest's memory is mapped once, IOVA = guest-physical address.
//!
//! For guests whose DMA addresses are their physical addresses (a guest without a
//! vIOMMU) that make `map_sg` requests through a policy. Mapping happens when a region
//! is registered, through [`DmaMappings::map_identity`] (the one identity mapping,
//! which UML's frontend also uses for its memory table), so `map_sg` and `unmap_sg`
//! only check that the request lies in registered memory; they never reach the mapper.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::{GuestMemory, GuestMemoryRegion};
use crate::iova::{Iova, IovaRange};
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper};
use crate::mappings::DmaMappings;
use crate::policy::DmaPolicy;
use crate::sg_list::{BusSgList, GuestSgList};

/// Maps whole guest memory regions at IOVA = guest-physical address.
#[derive(Debug)]
pub struct IdentityPolicy<M: DmaMapper> {
    iovas: Arc<IovaAllocator>,
    state: Mutex<State<M>>,
}

/// The registered regions and their mappings, changed together.
#[derive(Debug)]
struct State<M: DmaMapper> {
    memory: GuestMemory,
    mappings: DmaMappings<M>,
}

impl<M: DmaMapper> IdentityPolicy<M> {
    /// A policy mapping through `mapper`. The guest-physical ranges of its regions are
    /// reserved in `iovas`, which must describe the IOMMU's usable windows and be shared
    /// with every other policy on the same mapper.
    pub fn new(mapper: M, iovas: Arc<IovaAllocator>) -> IdentityPolicy<M> {
        IdentityPolicy {
            iovas,
            state: Mutex::new(State {
                memory: GuestMemory::new(),
                mappings: DmaMappings::new(mapper),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<M: DmaMapper> DmaPolicy for IdentityPolicy<M> {
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        let mut state = self.state();
        let page = state.mappings.mapper().page_size();
        let gpa = region.gpa();
        state.memory.add(region.clone(), page)?;
        let rollback = |state: &mut State<M>| {
            // Just added above, so it is there to remove.
            let _ = state.memory.remove(gpa);
        };
        // Reserving the IOVAs first refuses guest RAM placed over an IOMMU hole (the
        // MSI window) before anything is mapped.
        let range =
            match IovaRange::new(Iova(gpa.0), region.len()).and_then(|r| self.iovas.alloc_at(r)) {
                Ok(range) => range,
                Err(err) => {
                    rollback(&mut state);
                    return Err(err);
                }
            };
        // The region is page-aligned (checked by `add`), so the identity mapping covers
        // it whole.
        let (vaddr, _) = region.backing().host_range();
        let offset = region.vaddr().0 - vaddr.0;
        let mapped =
            state
                .mappings
                .map_identity(gpa, region.backing().clone(), offset, region.len());
        if let Err(err) = mapped {
            rollback(&mut state);
            let _ = self.iovas.free(range);
            return Err(err);
        }
        debug_assert_eq!(mapped.ok().flatten(), Some(range));
        Ok(())
    }

    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        let mut state = self.state();
        let state = &mut *state;
        let region = state
            .memory
            .get(gpa)
            .ok_or(DmaError::RegionNotFound { gpa: gpa.0 })?;
        let range = IovaRange::new(Iova(region.gpa().0), region.len())?;
        state.mappings.unmap(range)?;
        self.iovas.free(range)?;
        state.memory.remove(gpa)
    }

    fn map_sg(&self, sg: &GuestSgList, _access: DmaAccess) -> Result<BusSgList, DmaError> {
        let state = self.state();
        let mut bus = BusSgList::new();
        for seg in sg.segments() {
            if !state.memory.contains(seg.addr, seg.len) {
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
        let state = self.state();
        for seg in bus.segments() {
            if !state.memory.contains(GuestPhysAddr(seg.addr.0), seg.len) {
                return Err(DmaError::UnknownBusAddress {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
        }
        Ok(())
    }
}
