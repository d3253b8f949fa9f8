//! Strict per-request mapping: the device reaches exactly the pages of the requests in
//! flight, and an unmap has taken effect when `unmap_sg` returns.

use std::sync::Arc;

use crate::address::GuestPhysAddr;
use crate::error::DmaError;
use crate::guest_memory::GuestMemoryRegion;
use crate::iova_allocator::IovaAllocator;
use crate::mapper::{DmaAccess, DmaMapper};
use crate::policy::request_table::RequestTable;
use crate::policy::DmaPolicy;
use crate::sg_list::{BusSgList, GuestSgList};

/// Maps each request's pages at fresh IOVAs; unmaps synchronously.
#[derive(Debug)]
pub struct StrictPolicy<M: DmaMapper> {
    table: RequestTable<M>,
}

impl<M: DmaMapper> StrictPolicy<M> {
    /// A policy mapping through `mapper`, taking IOVAs from `iovas` (shared by every
    /// policy on the same mapper).
    pub fn new(mapper: M, iovas: Arc<IovaAllocator>) -> StrictPolicy<M> {
        StrictPolicy {
            table: RequestTable::new(mapper, iovas),
        }
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        self.table.mapper()
    }

    /// Number of live `map_sg` mappings.
    pub fn live_count(&self) -> usize {
        self.table.lock().live_count()
    }
}

impl<M: DmaMapper> DmaPolicy for StrictPolicy<M> {
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        self.table.add_region(region)
    }

    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        self.table.remove_region(gpa, |_| Ok(()))
    }

    fn map_sg(&self, sg: &GuestSgList, access: DmaAccess) -> Result<BusSgList, DmaError> {
        self.table.map_sg(sg, access, |_| Ok(false))
    }

    fn unmap_sg(&self, bus: &BusSgList) -> Result<(), DmaError> {
        self.table.unmap_sg_now(bus)
    }
}
