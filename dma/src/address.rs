//! Addresses that are not IOVAs: guest-physical and host-virtual.
//!
//! A guest hands out guest-physical addresses; the IOMMU is programmed with host
//! virtual addresses. Keeping each in its own type makes every translation between the
//! two explicit, which is where a guest could otherwise reach memory it does not own.

use std::fmt;

/// A guest-physical address, as a guest's driver programs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPhysAddr(pub u64);

/// A host virtual address in this process, as given to the IOMMU (`vaddr` of
/// VFIO_IOMMU_MAP_DMA). Only an address: dereferencing it is the memory module's job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostVirtAddr(pub u64);

macro_rules! address_ops {
    ($t:ident) => {
        impl $t {
            /// The raw address.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + offset`, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<$t> {
                match self.0.checked_add(offset) {
                    Some(v) => Some($t(v)),
                    None => None,
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_ops!(GuestPhysAddr);
address_ops!(HostVirtAddr);
