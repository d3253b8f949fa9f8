//! DMA for user-level drivers: where device-visible addresses (IOVAs) come from, how a
//! scatter-gather list becomes IOMMU mappings, and pinned memory a device can reach.
//!
//! This crate knows nothing about PCI or VFIO: a backend (udriver's VFIO container, or
//! a test recorder) implements the mapper trait.

pub mod address;
pub mod address_map;
pub mod error;
pub mod guest_memory;
pub mod iova;
pub mod iova_allocator;
pub mod mapper;
pub mod mappings;
pub mod memlock;
pub mod memory;
pub mod policy;
pub mod recording_mapper;
pub mod sg_list;

pub use address::{Address, GuestPhysAddr, HostVirtAddr};
pub use address_map::{AddressHasher, AddressMap};
pub use error::DmaError;
pub use guest_memory::{GuestMemory, GuestMemoryRegion, HostPiece};
pub use iova::{Iova, IovaRange};
pub use iova_allocator::{IovaAllocator, IovaLease};
pub use mapper::{DmaAccess, DmaMapper, DmaMapping, PAGE_SIZE};
pub use mappings::DmaMappings;
pub use memlock::{check_memlock, MemlockStatus};
pub use memory::{DmaBacking, DmaBuffer, DmaMemory, DmaValue, FdMemory, PagePreference, RawMemory};
pub use policy::{BatchConfig, BatchedPolicy, DmaPolicy, IdentityPolicy, StrictPolicy};
pub use recording_mapper::RecordingMapper;
pub use sg_list::{BusSgList, GuestSgList, HostSgList, PageRun, SgList, SgSegment};
