//! `VfioPassthroughDevice`: a [`PassthroughDevice`] over a udriver [`VfioDevice`].
//!
//! Every BAR and the ROM are opened once: their mmap-able parts are mapped, so a BAR
//! access that lands there is a volatile load or store with no syscall, and the rest
//! goes through pread/pwrite on the device fd.

use std::os::fd::{AsFd, BorrowedFd};

use udriver::vfio::{IrqAction, IrqData, IrqIndex, Region, RegionName, VfioDevice};

use super::device::{DeviceRegion, PassthroughDevice};
use super::error::{DeviceError, PassthroughError};
use crate::bar::BarIndex;
use crate::config::regs::header;

/// A VFIO device opened for passthrough: its regions mapped, its IRQ counts known.
#[derive(Debug)]
pub struct VfioPassthroughDevice {
    device: VfioDevice,
    /// BAR0..=BAR5, then the ROM; `None` where the device implements nothing.
    regions: Vec<Option<Region>>,
    /// Per index, in VFIO order.
    irq_counts: [u32; 5],
    can_reset: bool,
}

fn irq_slot(index: IrqIndex) -> Option<usize> {
    IrqIndex::ALL.iter().position(|i| *i == index)
}

fn region_name(index: BarIndex) -> RegionName {
    if index.is_rom() {
        RegionName::Rom
    } else {
        RegionName::Bar(index.get())
    }
}

impl VfioPassthroughDevice {
    /// Open every region of `device` and learn its interrupts.
    pub fn new(device: VfioDevice) -> Result<Self, PassthroughError> {
        let name = device.name().to_string();
        let mut regions = Vec::with_capacity(header::BAR_COUNT + 1);
        for index in BarIndex::all() {
            let region_index = region_name(index).index();
            let info = device.region_info(region_index).map_err(|e| {
                PassthroughError::device(&name, format!("reading {index} region info"), e.into())
            })?;
            let region = if info.is_present() {
                Some(device.region(region_index).map_err(|e| {
                    PassthroughError::device(&name, format!("opening {index}"), e.into())
                })?)
            } else {
                None
            };
            regions.push(region);
        }
        let mut irq_counts = [0; 5];
        for index in IrqIndex::ALL {
            let info = device.irq_info(index).map_err(|e| {
                PassthroughError::device(&name, format!("reading {index} info"), e.into())
            })?;
            if let Some(slot) = irq_slot(index) {
                irq_counts[slot] = if info.eventfd { info.count } else { 0 };
            }
        }
        let can_reset = device.info().reset;
        Ok(Self {
            device,
            regions,
            irq_counts,
            can_reset,
        })
    }

    /// Gives the device up to a successor process as it is (see
    /// [`VfioDevice::hand_over`]).
    pub fn hand_over(self) -> Result<udriver::vfio::DeviceHandover, PassthroughError> {
        let name = self.device.name().to_string();
        self.device
            .hand_over()
            .map_err(|e| PassthroughError::device(&name, "handing the device over", e.into()))
    }

    /// The VFIO device (for its fd, reset, or anything this type does not wrap).
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    fn opened(&self, index: BarIndex) -> Result<&Region, DeviceError> {
        self.regions
            .get(usize::from(index.get()))
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{}: {index} is not implemented", self.device.name()).into())
    }
}

impl PassthroughDevice for VfioPassthroughDevice {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn config_len(&self) -> usize {
        usize::try_from(self.device.config().size()).unwrap_or(usize::MAX)
    }

    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        Ok(self.device.config().read_bytes(offset.into(), data)?)
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError> {
        Ok(self.device.config().write_bytes(offset.into(), data)?)
    }

    fn region(&self, index: BarIndex) -> Option<DeviceRegion> {
        let region = self.regions.get(usize::from(index.get()))?.as_ref()?;
        Some(DeviceRegion {
            size: region.size(),
            fd_offset: region.info().offset,
            mmap_areas: region.mapped_areas(),
        })
    }

    fn read_region(
        &self,
        index: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        Ok(self.opened(index)?.read_bytes(offset, data)?)
    }

    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        Ok(self.opened(index)?.write_bytes(offset, data)?)
    }

    fn irq_count(&self, index: IrqIndex) -> u32 {
        irq_slot(index).map_or(0, |slot| self.irq_counts[slot])
    }

    fn wire_irqs(&self, index: IrqIndex, eventfds: &[BorrowedFd<'_>]) -> Result<(), DeviceError> {
        let fds: Vec<Option<BorrowedFd<'_>>> = eventfds.iter().copied().map(Some).collect();
        Ok(self.device.set_irq_eventfds(index, 0, &fds)?)
    }

    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError> {
        Ok(self.device.disable_irqs(index)?)
    }

    fn unmask_intx(&self) -> Result<(), DeviceError> {
        Ok(self.device.unmask_intx()?)
    }

    fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), DeviceError> {
        Ok(self.device.set_irqs(index, action, start, data)?)
    }

    fn can_reset(&self) -> bool {
        self.can_reset
    }

    fn reset(&self) -> Result<(), DeviceError> {
        self.device.reset()?;
        Ok(())
    }

    fn mmap_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.device.as_fd())
    }
}
