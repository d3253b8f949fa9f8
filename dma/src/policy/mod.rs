//! How a guest's DMA requests become IOMMU mappings.
//!
//! A policy owns one guest's registered memory and decides what the device may reach:
//!
//! - [`IdentityPolicy`]: all registered memory is mapped once, IOVA = guest-physical
//!   address. `map_sg` costs nothing, but the device can reach all of the guest's
//!   memory all the time. Right for a trusted guest or one without an IOMMU of its own
//!   (UML's DMA addresses are its physical addresses).
//! - [`StrictPolicy`]: each `map_sg` maps exactly the pages of that request at freshly
//!   allocated IOVAs, and `unmap_sg` removes them before it returns: the device can
//!   reach nothing else, at the price of two ioctls per request.
//! - [`BatchedPolicy`]: as strict, but unmaps are queued and issued together (merged
//!   where adjacent) when the queue is full, when it is old, or before its IOVAs could be
//!   handed out again. The device may reach a page briefly after `unmap_sg` returns —
//!   only the guest's own memory, never another's.
//!
//! All of them refuse a request that is not wholly inside registered memory.

mod batched;
mod identity;
mod live_table;
mod page_slots;
mod request_table;
mod strict;

pub use batched::{BatchConfig, BatchedPolicy};
pub use identity::IdentityPolicy;
pub use strict::StrictPolicy;

use crate::error::DmaError;
use crate::guest_memory::GuestMemoryRegion;
use crate::mapper::DmaAccess;
use crate::sg_list::{BusSgList, GuestSgList};
use crate::GuestPhysAddr;

/// Turns a guest's scatter-gather requests into IOMMU mappings. Shared between threads.
pub trait DmaPolicy: Send + Sync {
    /// Registers guest memory the guest may DMA to.
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError>;

    /// Unregisters the region based at `gpa`; after this no mapping reaches it.
    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError>;

    /// Makes `sg` reachable by the device with `access`; returns the bus addresses to
    /// program, covering the same bytes in the same order (contiguous bus segments are
    /// merged, so there may be fewer segments).
    fn map_sg(&self, sg: &GuestSgList, access: DmaAccess) -> Result<BusSgList, DmaError>;

    /// Ends the device's access to a list `map_sg` returned. Every mapping that a bus
    /// segment falls in is removed whole. Nothing changes if any segment is unknown.
    fn unmap_sg(&self, bus: &BusSgList) -> Result<(), DmaError>;

    /// Issues any deferred unmaps now.
    fn flush(&self) -> Result<(), DmaError> {
        Ok(())
    }
}

impl<P: DmaPolicy + ?Sized> DmaPolicy for std::sync::Arc<P> {
    fn add_region(&self, region: GuestMemoryRegion) -> Result<(), DmaError> {
        (**self).add_region(region)
    }
    fn remove_region(&self, gpa: GuestPhysAddr) -> Result<GuestMemoryRegion, DmaError> {
        (**self).remove_region(gpa)
    }
    fn map_sg(&self, sg: &GuestSgList, access: DmaAccess) -> Result<BusSgList, DmaError> {
        (**self).map_sg(sg, access)
    }
    fn unmap_sg(&self, bus: &BusSgList) -> Result<(), DmaError> {
        (**self).unmap_sg(bus)
    }
    fn flush(&self) -> Result<(), DmaError> {
        (**self).flush()
    }
}
