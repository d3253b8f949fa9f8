//! The host side of udrv: find PCI devices, claim them for VFIO, and drive them from
//! user space (regions, interrupts, DMA mappings).

pub mod bind;
pub mod claim;
pub mod inherited;
pub mod pci;
pub mod vfio;
