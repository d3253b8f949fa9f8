//! Addresses other than IOVAs (guest-physical, host-virtual), and the `Address` trait
//! shared by all three.
//!
//! A guest hands out guest-physical addresses; the IOMMU is programmed with host
//! virtual addresses. Keeping each in its own type makes every translation between the
//! two explicit, which is where a guest could otherwise reach memory it does not own.

use std::fmt;

use crate::iova::Iova;

/// An address in one of the address spaces DMA deals with. Lets scatter-gather lists
/// and page arithmetic be written once for guest-physical, host-virtual and IOVA.
pub trait Address: Copy + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The raw address.
    fn to_raw(self) -> u64;
    /// The address with this raw value.
    fn from_raw(raw: u64) -> Self;
}

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

        impl Address for $t {
            fn to_raw(self) -> u64 {
                self.0
            }
            fn from_raw(raw: u64) -> Self {
                $t(raw)
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

impl Address for Iova {
    fn to_raw(self) -> u64 {
        self.0
    }
    fn from_raw(raw: u64) -> Self {
        Iova(raw)
    }
}
