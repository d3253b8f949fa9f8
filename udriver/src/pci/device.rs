//! `PciDevice`: one PCI function as sysfs describes it.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{DeviceIds, PciAddress, PciClass, PciError, SysfsRoot};

/// The PCI driver that VFIO's device-assignment uses.
pub const VFIO_PCI: &str = "vfio-pci";

/// A PCI function read from `sys/bus/pci/devices/<address>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID (0 when the function has none).
    pub subsystem_vendor_id: u16,
    /// Subsystem device ID.
    pub subsystem_device_id: u16,
    /// Class code.
    pub class: PciClass,
    /// Revision ID.
    pub revision: u8,
    /// Config-space header type without the multi-function bit (0 endpoint, 1 bridge,
    /// 2 CardBus), `None` when config space could not be read.
    pub header_type: Option<u8>,
    /// The bound driver's name.
    pub driver: Option<String>,
    /// The `driver_override` setting (`None` for the kernel's "(null)").
    pub driver_override: Option<String>,
    /// The IOMMU group number; `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// The NUMA node; `None` when the platform reports none (-1).
    pub numa_node: Option<u32>,
    /// Whether the firmware used this device as the boot display (`boot_vga`).
    pub boot_vga: bool,
}

fn parse_hex(path: &Path, text: &str, expected: &'static str) -> Result<u32, PciError> {
    let digits = text.trim().strip_prefix("0x").unwrap_or(text.trim());
    u32::from_str_radix(digits, 16).map_err(|_| PciError::Parse {
        path: path.to_path_buf(),
        value: text.to_string(),
        expected,
    })
}

fn read_attr(dir: &Path, name: &str) -> Result<String, PciError> {
    let path = dir.join(name);
    SysfsRoot::read_text(&path).map_err(|e| PciError::read(path, e))
}

fn read_hex(dir: &Path, name: &str, max: u32, expected: &'static str) -> Result<u32, PciError> {
    let path = dir.join(name);
    let text = read_attr(dir, name)?;
    let value = parse_hex(&path, &text, expected)?;
    if value > max {
        return Err(PciError::Parse {
            path,
            value: text,
            expected,
        });
    }
    Ok(value)
}

fn read_optional_attr(dir: &Path, name: &str) -> Result<Option<String>, PciError> {
    let path = dir.join(name);
    SysfsRoot::read_optional(&path).map_err(|e| PciError::read(path, e))
}

fn link_name(dir: &Path, name: &str) -> Result<Option<String>, PciError> {
    let path = dir.join(name);
    SysfsRoot::link_name(&path).map_err(|e| PciError::read(path, e))
}

/// The header type byte (offset 0x0e) from the first 64 bytes of `config`, which
/// sysfs lets anyone read.
fn header_type(dir: &Path) -> Option<u8> {
    let mut head = [0u8; 16];
    let mut file = fs::File::open(dir.join("config")).ok()?;
    file.read_exact(&mut head).ok()?;
    Some(head[0x0e] & 0x7f)
}

impl PciDevice {
    /// Reads one device.
    pub fn read(root: &SysfsRoot, address: PciAddress) -> Result<Self, PciError> {
        let dir = root.pci_device(address);
        if !dir.exists() {
            return Err(PciError::NoSuchDevice {
                address,
                path: root.pci_devices(),
            });
        }
        let iommu_group = match link_name(&dir, "iommu_group")? {
            Some(name) => Some(name.parse::<u32>().map_err(|_| PciError::Parse {
                path: dir.join("iommu_group"),
                value: name,
                expected: "a link to sys/kernel/iommu_groups/<number>",
            })?),
            None => None,
        };
        let numa_node = match read_optional_attr(&dir, "numa_node")? {
            Some(text) => match text.trim().parse::<i64>() {
                Ok(n) if n >= 0 => u32::try_from(n).ok(),
                Ok(_) => None,
                Err(_) => {
                    return Err(PciError::Parse {
                        path: dir.join("numa_node"),
                        value: text,
                        expected: "a node number or -1",
                    })
                }
            },
            None => None,
        };
        let driver_override = read_optional_attr(&dir, "driver_override")?
            .filter(|text| !text.is_empty() && text != "(null)");
        let boot_vga = read_optional_attr(&dir, "boot_vga")?.is_some_and(|v| v.trim() == "1");
        // The ranges were checked by read_hex, so the narrowing casts are exact.
        Ok(Self {
            address,
            vendor_id: read_hex(&dir, "vendor", 0xffff, "a 16-bit hex id")? as u16,
            device_id: read_hex(&dir, "device", 0xffff, "a 16-bit hex id")? as u16,
            subsystem_vendor_id: match read_optional_attr(&dir, "subsystem_vendor")? {
                Some(_) => read_hex(&dir, "subsystem_vendor", 0xffff, "a 16-bit hex id")? as u16,
                None => 0,
            },
            subsystem_device_id: match read_optional_attr(&dir, "subsystem_device")? {
                Some(_) => read_hex(&dir, "subsystem_device", 0xffff, "a 16-bit hex id")? as u16,
                None => 0,
            },
            class: PciClass(read_hex(
                &dir,
                "class",
                0xff_ffff,
                "a 24-bit hex class code",
            )?),
            revision: match read_optional_attr(&dir, "revision")? {
                Some(_) => read_hex(&dir, "revision", 0xff, "an 8-bit hex revision")? as u8,
                None => 0,
            },
            header_type: header_type(&dir),
            driver: link_name(&dir, "driver")?,
            driver_override,
            iommu_group,
            numa_node,
            boot_vga,
        })
    }

    /// Every PCI device under `root`, sorted by address. Devices that disappear while
    /// being read (hot unplug) are left out.
    pub fn scan(root: &SysfsRoot) -> Result<Vec<Self>, PciError> {
        let dir = root.pci_devices();
        let entries = fs::read_dir(&dir).map_err(|e| PciError::read(&dir, e))?;
        let mut devices = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PciError::read(&dir, e))?;
            let Some(address) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<PciAddress>().ok())
            else {
                continue;
            };
            match Self::read(root, address) {
                Ok(device) => devices.push(device),
                Err(PciError::NoSuchDevice { .. }) => continue,
                Err(PciError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        devices.sort_by_key(|d| d.address);
        Ok(devices)
    }

    /// The ids that names are looked up by.
    pub fn ids(&self) -> DeviceIds {
        DeviceIds {
            vendor: self.vendor_id,
            device: self.device_id,
            subsystem_vendor: self.subsystem_vendor_id,
            subsystem_device: self.subsystem_device_id,
            class: self.class,
        }
    }

    /// Whether this is a bridge (any header type but 0). VFIO tolerates bridges in a
    /// group whatever driver they have, and cannot assign them.
    pub fn is_bridge(&self) -> bool {
        match self.header_type {
            Some(kind) => kind != 0,
            None => matches!(self.class.class_and_sub(), 0x0604 | 0x0609),
        }
    }

    /// Whether the bound driver is vfio-pci or a vendor's vfio-pci variant driver.
    pub fn is_on_vfio(&self) -> bool {
        self.driver.as_deref().is_some_and(is_vfio_driver)
    }

    /// Whether this device keeps its VFIO group from being viable: bound to a host
    /// driver other than a VFIO driver or pci-stub, and not a bridge.
    pub fn blocks_group(&self) -> bool {
        match self.driver.as_deref() {
            None => false,
            Some(driver) => !is_vfio_driver(driver) && driver != "pci-stub" && !self.is_bridge(),
        }
    }

    /// The device's sysfs directory.
    pub fn sysfs_path(&self, root: &SysfsRoot) -> PathBuf {
        root.pci_device(self.address)
    }
}

/// vfio-pci itself or a variant driver (`mlx5_vfio_pci`, `virtio_vfio_pci`, ...).
pub fn is_vfio_driver(driver: &str) -> bool {
    driver == VFIO_PCI || driver.ends_with("vfio_pci") || driver.ends_with("vfio-pci")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fixture::{DeviceSpec, FakeHost};

    #[test]
    fn reads_every_attribute() {
        let host = FakeHost::new();
        host.add(
            DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
                .subsystem(0x8086, 0x001e)
                .revision(3)
                .driver("e1000")
                .group(3)
                .numa(1),
        );
        let d = PciDevice::read(&host.root(), "00:02.0".parse().unwrap()).unwrap();
        assert_eq!((d.vendor_id, d.device_id), (0x8086, 0x100e));
        assert_eq!(
            (d.subsystem_vendor_id, d.subsystem_device_id),
            (0x8086, 0x001e)
        );
        assert_eq!(d.class, PciClass(0x020000));
        assert_eq!(d.revision, 3);
        assert_eq!(d.header_type, Some(0));
        assert_eq!(d.driver.as_deref(), Some("e1000"));
        assert_eq!(d.driver_override, None);
        assert_eq!(d.iommu_group, Some(3));
        assert_eq!(d.numa_node, Some(1));
        assert!(!d.boot_vga && !d.is_bridge() && !d.is_on_vfio() && d.blocks_group());
    }

    #[test]
    fn scan_sorts_and_handles_missing_optional_attributes() {
        let host = FakeHost::new();
        host.add(DeviceSpec::new("0000:00:1f.0", 0x8086, 0x2918, 0x060100));
        host.add(DeviceSpec::new("0000:00:01.0", 0x1af4, 0x1045, 0xff0000).driver("vfio-pci"));
        host.add(
            DeviceSpec::new("0000:00:1e.0", 0x8086, 0x244e, 0x060401)
                .bridge()
                .driver("pcieport"),
        );
        std::fs::remove_file(host.device_dir("0000:00:1f.0").join("numa_node")).unwrap();
        std::fs::write(
            host.device_dir("0000:00:1f.0").join("driver_override"),
            "vfio-pci\n",
        )
        .unwrap();
        let devices = PciDevice::scan(&host.root()).unwrap();
        let addresses: Vec<String> = devices.iter().map(|d| d.address.to_string()).collect();
        assert_eq!(addresses, ["0000:00:01.0", "0000:00:1e.0", "0000:00:1f.0"]);
        assert!(devices[0].is_on_vfio() && !devices[0].blocks_group());
        assert!(devices[1].is_bridge() && !devices[1].blocks_group());
        assert_eq!(devices[2].numa_node, None);
        assert_eq!(devices[2].driver_override.as_deref(), Some("vfio-pci"));
        assert_eq!(devices[2].iommu_group, None);
    }

    #[test]
    fn garbage_attributes_are_errors_that_name_the_file() {
        let host = FakeHost::new();
        host.add(DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000));
        std::fs::write(host.device_dir("0000:00:02.0").join("vendor"), "0xZZZZ\n").unwrap();
        let err = PciDevice::read(&host.root(), "00:02.0".parse().unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("0000:00:02.0/vendor") && text.contains("0xZZZZ"),
            "{text}"
        );
        std::fs::write(host.device_dir("0000:00:02.0").join("vendor"), "0x123456\n").unwrap();
        assert!(PciDevice::read(&host.root(), "00:02.0".parse().unwrap()).is_err());
    }

    #[test]
    fn missing_device_says_how_to_find_devices() {
        let host = FakeHost::new();
        let err = PciDevice::read(&host.root(), "00:09.0".parse().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("no PCI device 0000:00:09.0"),
            "{err}"
        );
        assert!(err.to_string().contains("udrv list"), "{err}");
    }

    #[test]
    fn vfio_variant_drivers_count_as_vfio() {
        assert!(is_vfio_driver("vfio-pci"));
        assert!(is_vfio_driver("mlx5_vfio_pci"));
        assert!(!is_vfio_driver("e1000"));
    }
}
