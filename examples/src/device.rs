//! Opening a PCI function for a user-level driver.
//!
//! The function must already be on vfio-pci (`udrv attach BDF`). Opening checks that
//! it is the kind of device the driver expects, puts its IOMMU group in a VFIO
//! container of its own (so each driver has its own IOVA space), and hands out DMA
//! buffers mapped in that space. IOVAs are kept below 4 GiB so that 32-bit DMA
//! engines (IDE bus mastering) can reach every buffer.

use std::sync::Arc;

use dma::{DmaAccess, DmaBuffer, DmaMemory, Iova, IovaAllocator, IovaRange, PagePreference};
use udriver::pci::{is_vfio_driver, PciAddress, PciDevice, SysfsRoot};
use udriver::vfio::{VfioContainer, VfioDevice, VfioGroup};

use crate::error::{DriverError, Result};

/// DMA buffers are placed at IOVAs in `[DMA_WINDOW_START, DMA_WINDOW_END)`: above the
/// first MiB (an IOVA of 0 looks like a null pointer to many devices) and below 4 GiB.
pub const DMA_WINDOW_START: u64 = 0x10_0000;
/// End of the IOVA window (exclusive).
pub const DMA_WINDOW_END: u64 = 0x1_0000_0000;

/// A DMA buffer in a device's IOVA space.
pub type DeviceBuffer = DmaBuffer<VfioContainer>;

/// A PCI function opened through VFIO for a driver, with its own IOMMU address space.
#[derive(Debug)]
pub struct Device {
    vfio: VfioDevice,
    container: VfioContainer,
    iovas: Arc<IovaAllocator>,
    pci: PciDevice,
}

impl Device {
    /// Opens `address`, which must be bound to vfio-pci and be accepted by `accepts`
    /// (the driver's check of vendor, device and class); `kind` names what the driver
    /// expects, for the error.
    pub fn open(
        address: PciAddress,
        kind: &str,
        accepts: fn(&PciDevice) -> bool,
    ) -> Result<Device> {
        let name = address.to_string();
        let pci = PciDevice::read(&SysfsRoot::system(), address)?;
        if !accepts(&pci) {
            return Err(DriverError::Setup {
                device: name,
                reason: format!(
                    "is {:04x}:{:04x} (class {:06x}), not {kind}",
                    pci.vendor_id, pci.device_id, pci.class.0
                ),
            });
        }
        match pci.driver.as_deref() {
            Some(d) if is_vfio_driver(d) => {}
            other => {
                return Err(DriverError::Setup {
                    reason: format!(
                        "is bound to {}, not vfio-pci; hand it to VFIO first: udrv attach {name}",
                        other.unwrap_or("no driver")
                    ),
                    device: name,
                })
            }
        }
        let group_id = pci.iommu_group.ok_or_else(|| DriverError::Setup {
            device: name.clone(),
            reason: "has no IOMMU group: boot with the IOMMU on (intel_iommu=on or amd_iommu=on)"
                .into(),
        })?;
        let container = VfioContainer::open()?;
        let group = VfioGroup::open(group_id)?;
        container.attach(&group)?;
        let vfio = group.open_device(&name)?;
        let iovas = Arc::new(IovaAllocator::new(&dma_window(&container)?)?);
        Ok(Device {
            vfio,
            container,
            iovas,
            pci,
        })
    }

    /// The device's name, `0000:00:02.0`.
    pub fn name(&self) -> &str {
        self.vfio.name()
    }

    /// The VFIO device: BARs, config space, interrupts.
    pub fn vfio(&self) -> &VfioDevice {
        &self.vfio
    }

    /// What sysfs said about the device when it was opened.
    pub fn pci(&self) -> &PciDevice {
        &self.pci
    }

    /// Pinned, zeroed memory of at least `len` bytes, mapped for the device at an IOVA
    /// below 4 GiB. Large buffers go on huge pages when the system has them.
    pub fn dma_buffer(&self, len: usize, access: DmaAccess) -> Result<DeviceBuffer> {
        let pages = if len >= dma::memory::HUGE_PAGE_SIZE / 2 {
            PagePreference::HugeIfAvailable
        } else {
            PagePreference::SmallOnly
        };
        let memory = DmaMemory::allocate_with(len, pages)?;
        Ok(DmaBuffer::map(
            memory,
            self.container.clone(),
            &self.iovas,
            access,
        )?)
    }
}

/// The IOMMU's usable IOVA windows, clipped to the driver window.
fn dma_window(container: &VfioContainer) -> Result<Vec<IovaRange>> {
    let info = container.iommu_info()?;
    let full = IovaRange::from_inclusive(Iova(0), Iova(u64::MAX - 1))?;
    let usable = if info.iova_ranges.is_empty() {
        vec![full]
    } else {
        info.iova_ranges
    };
    Ok(clip(&usable, DMA_WINDOW_START, DMA_WINDOW_END))
}

/// The parts of `ranges` inside `[start, end)`.
fn clip(ranges: &[IovaRange], start: u64, end: u64) -> Vec<IovaRange> {
    ranges
        .iter()
        .filter_map(|r| {
            let lo = r.start().0.max(start);
            let hi = r.last().0.min(end - 1);
            (lo <= hi)
                .then(|| IovaRange::from_inclusive(Iova(lo), Iova(hi)).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_clipped_below_4_gib_and_above_the_first_mib() {
        // The rig's IOMMU: everything but the MSI window, up to 2^39.
        let rig = [
            IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap(),
            IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0x7f_ffff_ffff)).unwrap(),
        ];
        let got = clip(&rig, DMA_WINDOW_START, DMA_WINDOW_END);
        assert_eq!(
            got,
            vec![
                IovaRange::from_inclusive(Iova(0x10_0000), Iova(0xfedf_ffff)).unwrap(),
                IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0xffff_ffff)).unwrap(),
            ]
        );
        let high = [IovaRange::from_inclusive(Iova(0x1_0000_0000), Iova(0x2_0000_0000)).unwrap()];
        assert!(clip(&high, DMA_WINDOW_START, DMA_WINDOW_END).is_empty());
    }
}
