//! `IommuGroup`: the devices the IOMMU cannot isolate from each other. VFIO hands out
//! whole groups, so every member matters when one is claimed.

use std::fs;
use std::io;

use super::{PciAddress, PciError, SysfsRoot};

/// An IOMMU group and its PCI members (sorted).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IommuGroup {
    /// The group number (`/dev/vfio/<id>`).
    pub id: u32,
    /// Every PCI function in the group, the asking device included.
    pub members: Vec<PciAddress>,
}

impl IommuGroup {
    /// Reads `sys/kernel/iommu_groups/<id>/devices`. Non-PCI members are left out.
    pub fn read(root: &SysfsRoot, id: u32) -> Result<Self, PciError> {
        let dir = root.iommu_group_devices(id);
        let entries = fs::read_dir(&dir).map_err(|e| PciError::read(&dir, e))?;
        let mut members = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PciError::read(&dir, e))?;
            if let Some(address) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                members.push(address);
            }
        }
        members.sort();
        Ok(Self { id, members })
    }

    /// Reads the group, or `None` when the directory is gone (the group went away
    /// between listing and reading).
    pub fn read_optional(root: &SysfsRoot, id: u32) -> Result<Option<Self>, PciError> {
        match Self::read(root, id) {
            Err(PciError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// The members other than `address`.
    pub fn others(&self, address: PciAddress) -> impl Iterator<Item = PciAddress> + '_ {
        self.members.iter().copied().filter(move |m| *m != address)
    }
}
