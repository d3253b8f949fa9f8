//! PCI devices as the host sees them: addresses, sysfs discovery, names from the PCI ID
//! database, IOMMU groups, and whether the host is using a device.

mod address;
mod class;
mod device;
mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixture;
pub mod in_use;
mod inventory;
mod iommu_group;
mod names;
mod sysfs;

pub use address::{AddressParseError, PciAddress};
pub use class::{BaseClass, ClassFilter, ClassFilterError, PciClass, BASE_CLASSES};
pub use device::{is_vfio_driver, PciDevice, VFIO_PCI};
pub use error::PciError;
pub use in_use::{HostUsage, InUse};
pub use inventory::{DeviceFilter, DeviceReport, Inventory};
pub use iommu_group::IommuGroup;
pub use names::{DeviceIds, DeviceNames, NameDatabase, NameSource, PciIds, SYSTEM_PCI_IDS};
pub use sysfs::SysfsRoot;
