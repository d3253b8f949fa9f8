//! VFIO: user-space access to a PCI device through the kernel's vfio-pci driver.
//!
//! ```text
//! VfioContainer  one IOMMU address space; DMA mappings (dma::DmaMapper)
//!   VfioGroup    an IOMMU group, /dev/vfio/N; must be viable
//!     VfioDevice one PCI function: regions, BARs, config, interrupts, reset
//!       Region / Bar   mmap'd where allowed, pread/pwrite elsewhere, bounds-checked
//!       IrqSet         one EventFd per vector
//!   handover     all three given up as they are to a successor process, and resumed
//! ```
//!
//! A typical sequence: `VfioContainer::open()`, `VfioGroup::open(n)`,
//! `container.attach(&group)`, `group.open_device("0000:00:02.0")`, then `device.bar(0)`,
//! `device.enable_irqs(IrqIndex::Msix, n)`, and `container.map(...)` for DMA.
//!
//! The layer's unsafe code is in `ioctl` (the kernel interface), `mmio` (the mmap'd
//! device memory) and `dma_map`, whose blocks issue VFIO_IOMMU_MAP_DMA under the
//! contract of the `unsafe` [`dma::DmaMapper::map`] (the caller keeps the memory
//! mapped and owned for DMA until it is unmapped).

mod bar;
mod capability;
mod container;
mod device;
mod dma_map;
mod error;
mod eventfd;
mod group;
mod handover;
pub mod ioctl;
mod irq;
mod mapping_mirror;
mod mmio;
mod region;
mod reset;

pub use bar::{Bar, BarKind};
pub use container::{IommuBackend, IommuInfo, VfioContainer};
pub use device::{DeviceInfo, VfioDevice};
pub use error::{Access, Result, VfioError};
pub use eventfd::EventFd;
pub use group::{VfioGroup, VFIO_DEV_DIR};
pub use handover::DeviceHandover;
pub use irq::{IrqAction, IrqData, IrqIndex, IrqInfo, IrqSet};
pub use mmio::MmioValue;
pub use region::{MmapArea, Region, RegionInfo, RegionName, RegionType};
pub use reset::ResetMethod;

#[cfg(test)]
mod tests {
    use super::*;

    /// One container, device or region is shared by an event loop and the threads
    /// that serve a device: they must be Send and Sync.
    #[test]
    fn handles_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<VfioContainer>();
        shared::<VfioGroup>();
        shared::<VfioDevice>();
        shared::<Region>();
        shared::<Bar>();
        shared::<IrqSet>();
        shared::<EventFd>();
    }
}
