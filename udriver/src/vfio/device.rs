//! `VfioDevice`: one PCI function opened through its VFIO group. It hands out regions
//! and BARs, wires interrupts (see `irq`), resets (see `reset`) and, when released,
//! turns bus mastering off and interrupts off so the device stops touching memory.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX,
};

use crate::pci::PciAddress;

use super::bar::{Bar, BarKind};
use super::error::{Result, VfioError};
use super::group::VfioGroup;
use super::ioctl;
use super::irq::IrqIndex;
use super::region::{Region, RegionInfo, RegionName};

/// PCI command register offset and its bus-master bit.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// First BAR register.
const PCI_BASE_ADDRESS_0: u64 = 0x10;

/// The device fd and the name it is known by, shared by the device and its regions.
#[derive(Debug)]
pub(crate) struct DeviceFile {
    pub(crate) name: String,
    pub(crate) file: File,
}

/// What `VFIO_DEVICE_GET_INFO` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device offers a function reset (`VFIO_DEVICE_RESET`).
    pub reset: bool,
    /// A PCI device (regions and IRQ indexes are numbered as for vfio-pci).
    pub pci: bool,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indexes.
    pub num_irqs: u32,
}

/// An open VFIO PCI device.
#[derive(Debug)]
pub struct VfioDevice {
    file: Arc<DeviceFile>,
    group: VfioGroup,
    info: DeviceInfo,
    config: Region,
    /// Bit `i` set: IRQ index `i` has been enabled and not disabled since.
    enabled_irqs: AtomicU32,
    /// Cleared by [`hand_over`](VfioDevice::hand_over): the successor drives the
    /// device, so dropping this handle must not quiesce it.
    quiesce_on_drop: bool,
}

impl VfioDevice {
    /// Opens `name` (e.g. `0000:00:02.0`) in `group`, which must be in a container.
    pub(crate) fn open(group: &VfioGroup, name: &str) -> Result<VfioDevice> {
        let cname = std::ffi::CString::new(name).map_err(|_| VfioError::Malformed {
            target: format!("VFIO group {}", group.id()),
            what: "device name",
            reason: format!("{name:?} contains a NUL byte"),
        })?;
        let fd = ioctl::group_get_device_fd(group.as_fd(), &cname).map_err(|source| {
            VfioError::Ioctl {
                target: format!("VFIO group {}", group.id()),
                op: format!(
                    "VFIO_GROUP_GET_DEVICE_FD({name}) (is {name} in this group and bound to vfio-pci?)"
                ),
                source,
            }
        })?;
        VfioDevice::from_fd(group, name, fd, 0)
    }

    /// The device behind `fd`, opened as `name` in `group`, with the IRQ indexes of
    /// `enabled_irqs` (a bit per index) recorded as enabled.
    pub(crate) fn from_fd(
        group: &VfioGroup,
        name: &str,
        fd: std::os::fd::OwnedFd,
        enabled_irqs: u32,
    ) -> Result<VfioDevice> {
        let file = Arc::new(DeviceFile {
            name: name.to_string(),
            file: File::from(fd),
        });
        let raw = ioctl::device_get_info(file.file.as_fd()).map_err(|source| VfioError::Ioctl {
            target: name.to_string(),
            op: "VFIO_DEVICE_GET_INFO".into(),
            source,
        })?;
        let info = DeviceInfo {
            reset: raw.flags & VFIO_DEVICE_FLAGS_RESET != 0,
            pci: raw.flags & VFIO_DEVICE_FLAGS_PCI != 0,
            num_regions: raw.num_regions,
            num_irqs: raw.num_irqs,
        };
        if !info.pci || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX {
            return Err(VfioError::Malformed {
                target: name.to_string(),
                what: "device info",
                reason: format!(
                    "not a vfio-pci device (flags {:#x}, {} regions)",
                    raw.flags, raw.num_regions
                ),
            });
        }
        let config_info = region_info(&file, VFIO_PCI_CONFIG_REGION_INDEX)?;
        let config = Region::open(file.clone(), config_info)?;
        Ok(VfioDevice {
            file,
            group: group.clone(),
            info,
            config,
            enabled_irqs: AtomicU32::new(enabled_irqs),
            quiesce_on_drop: true,
        })
    }

    /// The device's name, `0000:00:02.0`.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The device's PCI address, when its name is one (it is for vfio-pci).
    pub fn address(&self) -> Option<PciAddress> {
        self.file.name.parse().ok()
    }

    /// What VFIO reports about the device.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The group the device was opened through.
    pub fn group(&self) -> &VfioGroup {
        &self.group
    }

    /// PCI configuration space as VFIO presents it (some fields virtualised).
    pub fn config(&self) -> &Region {
        &self.config
    }

    /// What VFIO reports about region `index`, capabilities included.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo> {
        region_info(&self.file, index)
    }

    /// Every region the device reports, in index order. Indexes the kernel rejects
    /// (the VGA region of a non-VGA device) are left out; absent BARs are included
    /// with size 0.
    pub fn regions(&self) -> Result<Vec<RegionInfo>> {
        let mut out = Vec::new();
        for index in 0..self.info.num_regions {
            match region_info(&self.file, index) {
                Ok(info) => out.push(info),
                Err(VfioError::Ioctl {
                    source: nix::errno::Errno::EINVAL,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Opens region `index`: its mmap-able parts mapped, the rest by pread/pwrite.
    pub fn region(&self, index: u32) -> Result<Region> {
        let info = self.region_info(index)?;
        if !info.is_present() {
            return Err(VfioError::NoSuchRegion {
                device: self.name().to_string(),
                region: info.name,
                reason: "the device does not implement this region (size 0)",
            });
        }
        Region::open(self.file.clone(), info)
    }

    /// Opens BAR `n` (0..=5), with its kind read from config space.
    pub fn bar(&self, n: u8) -> Result<Bar> {
        if n > 5 {
            return Err(VfioError::NoSuchRegion {
                device: self.name().to_string(),
                region: RegionName::Bar(n),
                reason: "PCI devices have BAR0..BAR5",
            });
        }
        let info = self.region_info(u32::from(n))?;
        if !info.is_present() {
            return Err(VfioError::NoSuchRegion {
                device: self.name().to_string(),
                region: info.name,
                reason: "the device does not implement this BAR (or it is the upper half of a 64-bit BAR)",
            });
        }
        let kind = self.bar_kind(n)?;
        Ok(Bar::new(n, kind, Region::open(self.file.clone(), info)?))
    }

    /// What BAR `n` decodes, from its register in config space. VFIO rewrites the
    /// register from the kernel's resource flags, so this is right even for the fixed
    /// legacy ports of an IDE controller in compatibility mode.
    pub fn bar_kind(&self, n: u8) -> Result<BarKind> {
        let reg = self
            .config
            .read32(PCI_BASE_ADDRESS_0 + 4 * u64::from(n.min(5)))?;
        Ok(BarKind::from_device_register(reg))
    }

    /// Turns bus mastering (the device's DMA) on or off in the command register.
    pub fn set_bus_master(&self, on: bool) -> Result<()> {
        let cmd = self.config.read16(PCI_COMMAND)?;
        let new = if on {
            cmd | PCI_COMMAND_MASTER
        } else {
            cmd & !PCI_COMMAND_MASTER
        };
        if new != cmd {
            self.config.write16(PCI_COMMAND, new)?;
        }
        Ok(())
    }

    /// Stops the device from reaching memory or raising interrupts: bus mastering off,
    /// every IRQ index this device enabled disabled. Done on drop as well; call it
    /// directly to see errors.
    pub fn quiesce(&self) -> Result<()> {
        let mut first_error = None;
        for index in IrqIndex::ALL {
            if self.enabled_irqs.load(Ordering::Acquire) & (1 << index.raw()) != 0 {
                if let Err(e) = self.disable_irqs(index) {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.set_bus_master(false) {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn enabled_irq_bits(&self) -> u32 {
        self.enabled_irqs.load(Ordering::Acquire)
    }

    pub(crate) fn keep_running_on_drop(&mut self) {
        self.quiesce_on_drop = false;
    }

    pub(crate) fn note_irqs_enabled(&self, index: IrqIndex, enabled: bool) {
        let bit = 1 << index.raw();
        if enabled {
            self.enabled_irqs.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.enabled_irqs.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    pub(crate) fn ioctl_error(&self, op: String, source: nix::Error) -> VfioError {
        VfioError::Ioctl {
            target: self.name().to_string(),
            op,
            source,
        }
    }
}

fn region_info(file: &DeviceFile, index: u32) -> Result<RegionInfo> {
    let name = RegionName::from_index(index);
    let reply = ioctl::device_get_region_info(file.file.as_fd(), index).map_err(|source| {
        VfioError::Ioctl {
            target: file.name.clone(),
            op: format!("VFIO_DEVICE_GET_REGION_INFO({name})"),
            source,
        }
    })?;
    RegionInfo::parse(&file.name, reply.bytes())
}

impl AsFd for VfioDevice {
    /// The device fd, for ioctls this crate does not wrap.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.file.as_fd()
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        if !self.quiesce_on_drop {
            return;
        }
        if let Err(e) = self.quiesce() {
            tracing::warn!(device = %self.name(), error = %e, "quiescing the device on release failed");
        }
    }
}
