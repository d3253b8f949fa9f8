//! `Inventory`: every PCI device with its names, IOMMU group and in-use reasons — what
//! `udrv list` prints, as a library call.

use std::collections::{BTreeMap, HashSet};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::{
    ClassFilter, DeviceNames, HostUsage, InUse, IommuGroup, NameDatabase, NameSource, PciDevice,
    PciError, SysfsRoot,
};

/// One device with everything known about it.
#[derive(Clone, Debug)]
pub struct DeviceReport {
    /// What sysfs says.
    pub device: PciDevice,
    /// Its names.
    pub names: DeviceNames,
    /// Its IOMMU group, members included.
    pub group: Option<IommuGroup>,
    /// Why the host uses the device itself (empty when it does not).
    pub in_use: Vec<InUse>,
}

impl DeviceReport {
    /// The in-use reasons as one line, `None` when the device is free.
    pub fn in_use_text(&self) -> Option<String> {
        (!self.in_use.is_empty()).then(|| {
            self.in_use
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The device the way `lspci -nn` prints it (without the slot):
    /// `Ethernet controller [0200]: Intel Corporation 82540EM Gigabit Ethernet Controller [8086:100e] (rev 03)`.
    pub fn lspci_line(&self) -> String {
        let d = &self.device;
        let class = format!("{:04x}", d.class.class_and_sub());
        let class_text = match &self.names.class {
            Some(name) => format!("{name} [{class}]"),
            None => format!("Class [{class}]"),
        };
        let ids = format!("{:04x}:{:04x}", d.vendor_id, d.device_id);
        let device_text = match (&self.names.vendor, &self.names.device) {
            (Some(v), Some(n)) => format!("{v} {n} [{ids}]"),
            (Some(v), None) => format!("{v} Device [{ids}]"),
            (None, _) => format!("Device [{ids}]"),
        };
        let mut line = format!("{class_text}: {device_text}");
        if d.revision != 0 {
            line.push_str(&format!(" (rev {:02x})", d.revision));
        }
        line
    }
}

impl Serialize for DeviceReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = &self.device;
        let n = &self.names;
        let mut s = serializer.serialize_struct("DeviceReport", 24)?;
        s.serialize_field("address", &d.address)?;
        s.serialize_field("vendor_id", &format!("{:04x}", d.vendor_id))?;
        s.serialize_field("device_id", &format!("{:04x}", d.device_id))?;
        s.serialize_field(
            "subsystem_vendor_id",
            &format!("{:04x}", d.subsystem_vendor_id),
        )?;
        s.serialize_field(
            "subsystem_device_id",
            &format!("{:04x}", d.subsystem_device_id),
        )?;
        s.serialize_field("class_id", &format!("{:04x}", d.class.class_and_sub()))?;
        s.serialize_field("prog_if", &format!("{:02x}", d.class.prog_if()))?;
        s.serialize_field("revision", &format!("{:02x}", d.revision))?;
        s.serialize_field("vendor_name", &n.vendor)?;
        s.serialize_field("device_name", &n.device)?;
        s.serialize_field("subsystem_vendor_name", &n.subsystem_vendor)?;
        s.serialize_field("subsystem_name", &n.subsystem)?;
        s.serialize_field("class_name", &n.class)?;
        s.serialize_field("prog_if_name", &n.prog_if)?;
        s.serialize_field("class_keyword", d.class.keyword())?;
        s.serialize_field("driver", &d.driver)?;
        s.serialize_field("driver_override", &d.driver_override)?;
        s.serialize_field("iommu_group", &d.iommu_group)?;
        let members: Vec<String> = self
            .group
            .iter()
            .flat_map(|g| g.members.iter().map(ToString::to_string))
            .collect();
        s.serialize_field("iommu_group_members", &members)?;
        s.serialize_field("numa_node", &d.numa_node)?;
        s.serialize_field("boot_vga", &d.boot_vga)?;
        s.serialize_field("is_bridge", &d.is_bridge())?;
        s.serialize_field("in_use", &self.in_use_text())?;
        let reasons: Vec<String> = self.in_use.iter().map(ToString::to_string).collect();
        s.serialize_field("in_use_reasons", &reasons)?;
        s.end()
    }
}

/// Which devices to show.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    /// Only this class.
    pub class: Option<ClassFilter>,
    /// Only devices bound to this driver (`none` selects devices without one).
    pub driver: Option<String>,
    /// Only devices bound to vfio-pci (or a vfio-pci variant driver).
    pub vfio: bool,
}

impl DeviceFilter {
    /// Whether `report` passes.
    pub fn matches(&self, report: &DeviceReport) -> bool {
        let d = &report.device;
        if let Some(class) = self.class {
            if !class.matches(d.class) {
                return false;
            }
        }
        if let Some(driver) = &self.driver {
            let wanted_none = driver == "none" || driver.is_empty();
            match &d.driver {
                Some(bound) if bound == driver => {}
                None if wanted_none => {}
                _ => return false,
            }
        }
        !self.vfio || d.is_on_vfio()
    }
}

/// Every PCI device on the host, described.
#[derive(Debug)]
pub struct Inventory {
    /// The devices, by address.
    pub devices: Vec<DeviceReport>,
    /// Where the names came from.
    pub name_source: NameSource,
}

impl Inventory {
    /// Reads every device, names it from the system's pci.ids (or the embedded
    /// database) and checks what the host uses.
    pub fn take(root: &SysfsRoot) -> Result<Self, PciError> {
        let usage = HostUsage::read(root)?;
        Self::take_with(root, &usage, None)
    }

    /// Like [`Inventory::take`] with a given usage snapshot and, optionally, a given
    /// name database (`None`: the system's).
    pub fn take_with(
        root: &SysfsRoot,
        usage: &HostUsage,
        names: Option<&NameDatabase>,
    ) -> Result<Self, PciError> {
        let devices = PciDevice::scan(root)?;
        let loaded;
        let names = match names {
            Some(db) => db,
            None => {
                let vendors: HashSet<u16> = devices
                    .iter()
                    .flat_map(|d| [d.vendor_id, d.subsystem_vendor_id])
                    .collect();
                loaded = NameDatabase::load(root, Some(&vendors));
                &loaded
            }
        };
        let mut groups: BTreeMap<u32, Option<IommuGroup>> = BTreeMap::new();
        let mut reports = Vec::with_capacity(devices.len());
        for device in devices {
            let group = match device.iommu_group {
                Some(id) => match groups.get(&id) {
                    Some(group) => group.clone(),
                    None => {
                        let group = IommuGroup::read_optional(root, id)?;
                        groups.insert(id, group.clone());
                        group
                    }
                },
                None => None,
            };
            reports.push(DeviceReport {
                names: names.describe(&device.ids()),
                in_use: usage.reasons(&device),
                group,
                device,
            });
        }
        Ok(Self {
            devices: reports,
            name_source: names.source().clone(),
        })
    }

    /// The report for one address.
    pub fn get(&self, address: super::PciAddress) -> Option<&DeviceReport> {
        self.devices.iter().find(|r| r.device.address == address)
    }
}

#[cfg(test)]
mod tests;
