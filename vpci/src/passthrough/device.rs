//! `PassthroughDevice`: what a passthrough function needs from the real device.
//!
//! The seam between config-space virtualisation and VFIO. [`VfioPassthroughDevice`]
//! implements it over a `udriver` [`VfioDevice`]; host tests implement it over a
//! config image and plain memory. Every method takes `&self`: VFIO's device fd is
//! shared, and the function serialises guest accesses itself.
//!
//! [`VfioPassthroughDevice`]: super::VfioPassthroughDevice
//! [`VfioDevice`]: udriver::vfio::VfioDevice

use std::os::fd::BorrowedFd;

use udriver::vfio::{IrqAction, IrqData, IrqIndex, MmapArea};

use super::error::DeviceError;
use crate::bar::BarIndex;

/// A region of the real device: a BAR or the expansion ROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Bytes the device implements (0: not implemented).
    pub size: u64,
    /// Where the region lies in the device fd, for a VMM that mmaps it itself.
    pub fd_offset: u64,
    /// Parts that are mmap'd (served without a syscall) and that a VMM may map
    /// straight into its guest.
    pub mmap_areas: Vec<MmapArea>,
}

/// The real device behind a passthrough function.
pub trait PassthroughDevice: Send {
    /// The device's name in errors and logs, e.g. `0000:00:04.0`.
    fn name(&self) -> &str;

    /// Size of the config space the device exposes (256, or 4096 for PCI Express).
    fn config_len(&self) -> usize;

    /// Read `data.len()` (1, 2 or 4, naturally aligned) config bytes at `offset`.
    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError>;

    /// Write config bytes at `offset` (1, 2 or 4, naturally aligned).
    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError>;

    /// BAR `index` or the ROM; `None` if the device does not implement it.
    fn region(&self, index: BarIndex) -> Option<DeviceRegion>;

    /// Read from a region; `offset + data.len()` lies within its size.
    fn read_region(&self, index: BarIndex, offset: u64, data: &mut [u8])
        -> Result<(), DeviceError>;

    /// Write to a region; `offset + data.len()` lies within its size.
    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Vectors the device offers on `index` (0: none).
    fn irq_count(&self, index: IrqIndex) -> u32;

    /// Enable vectors `0..eventfds.len()` of `index`, vector `i` signalling
    /// `eventfds[i]`. Only one index is live at a time; the caller disables the other
    /// first.
    fn wire_irqs(&self, index: IrqIndex, eventfds: &[BorrowedFd<'_>]) -> Result<(), DeviceError>;

    /// Disable every vector of `index`.
    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError>;

    /// Unmask INTx after the guest serviced it (the kernel masked it when it fired).
    fn unmask_intx(&self) -> Result<(), DeviceError>;

    /// A `VFIO_DEVICE_SET_IRQS` exactly as a VMM asked for it (a vfio-user client
    /// wiring its own eventfds): any index, action and data.
    fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), DeviceError>;

    /// Whether [`reset`](Self::reset) can reset the device.
    fn can_reset(&self) -> bool;

    /// Reset the device (function-level or whatever VFIO offers).
    fn reset(&self) -> Result<(), DeviceError>;

    /// The fd a VMM mmaps the regions' [`mmap_areas`](DeviceRegion::mmap_areas) from,
    /// at [`fd_offset`](DeviceRegion::fd_offset): the VFIO device fd. Handing it out
    /// gives the holder the whole device (config, reset, interrupts) but never the
    /// IOMMU.
    fn mmap_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A shared device: the owner of the `Arc` keeps a handle (a test firing a fake's
/// vectors while a frontend serves it).
impl<T: PassthroughDevice + Sync + ?Sized> PassthroughDevice for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn config_len(&self) -> usize {
        (**self).config_len()
    }
    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read_config(offset, data)
    }
    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError> {
        (**self).write_config(offset, data)
    }
    fn region(&self, index: BarIndex) -> Option<DeviceRegion> {
        (**self).region(index)
    }
    fn read_region(
        &self,
        index: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        (**self).read_region(index, offset, data)
    }
    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        (**self).write_region(index, offset, data)
    }
    fn irq_count(&self, index: IrqIndex) -> u32 {
        (**self).irq_count(index)
    }
    fn wire_irqs(&self, index: IrqIndex, eventfds: &[BorrowedFd<'_>]) -> Result<(), DeviceError> {
        (**self).wire_irqs(index, eventfds)
    }
    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError> {
        (**self).disable_irqs(index)
    }
    fn unmask_intx(&self) -> Result<(), DeviceError> {
        (**self).unmask_intx()
    }
    fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), DeviceError> {
        (**self).set_irqs(index, action, start, data)
    }
    fn can_reset(&self) -> bool {
        (**self).can_reset()
    }
    fn reset(&self) -> Result<(), DeviceError> {
        (**self).reset()
    }
    fn mmap_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).mmap_fd()
    }
}
