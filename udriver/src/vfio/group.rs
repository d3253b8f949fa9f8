//! `VfioGroup`: an IOMMU group opened through `/dev/vfio/N`. The group is the unit of
//! isolation: it must be viable (every device in it bound to vfio-pci or to nothing)
//! and in a container before any of its devices can be opened.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::VFIO_GROUP_FLAGS_VIABLE;

use super::container::VfioContainer;
use super::device::VfioDevice;
use super::error::{Result, VfioError};
use super::ioctl;

/// Where the kernel puts VFIO's character devices.
pub const VFIO_DEV_DIR: &str = "/dev/vfio";

/// An open VFIO group. Clones share the one open fd.
#[derive(Clone, Debug)]
pub struct VfioGroup(pub(crate) Arc<GroupInner>);

#[derive(Debug)]
pub(crate) struct GroupInner {
    pub(crate) id: u32,
    pub(crate) file: File,
    /// Set while the group is in a container; keeps the container alive.
    pub(crate) container: Mutex<Option<VfioContainer>>,
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            "no such VFIO group: load vfio-pci and bind a device of this IOMMU group to it first (udrv attach)"
        }
        Some(libc::EBUSY) => {
            "the group is already open (by another process or another VfioGroup here); close it first"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "run as root or give this user read-write access to the file"
        }
        _ => "check that VFIO is loaded and the IOMMU is enabled",
    }
}

impl VfioGroup {
    /// Opens IOMMU group `id` at `/dev/vfio/<id>` and checks that it is viable.
    pub fn open(id: u32) -> Result<VfioGroup> {
        VfioGroup::open_path(&Path::new(VFIO_DEV_DIR).join(id.to_string()), id)
    }

    /// Opens group `id` at `path` and checks that it is viable.
    pub fn open_path(path: &Path, id: u32) -> Result<VfioGroup> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| VfioError::Open {
                path: PathBuf::from(path),
                hint: open_hint(&source),
                source,
            })?;
        let group = VfioGroup(Arc::new(GroupInner {
            id,
            file,
            container: Mutex::new(None),
        }));
        if !group.is_viable()? {
            return Err(VfioError::GroupNotViable { group: id });
        }
        Ok(group)
    }

    /// The IOMMU group number.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// Whether every device in the group is bound to vfio-pci or to no driver.
    pub fn is_viable(&self) -> Result<bool> {
        let flags = ioctl::group_get_status(self.as_fd()).map_err(|source| VfioError::Ioctl {
            target: format!("VFIO group {}", self.id()),
            op: "VFIO_GROUP_GET_STATUS".into(),
            source,
        })?;
        Ok(flags & VFIO_GROUP_FLAGS_VIABLE != 0)
    }

    /// The container the group is in, if any.
    pub fn container(&self) -> Option<VfioContainer> {
        self.0
            .container
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Opens device `name` (its sysfs name, `0000:00:02.0`, which is how a
    /// [`PciAddress`](crate::pci::PciAddress) displays) of this group. The group must be
    /// in a container ([`VfioContainer::attach`]).
    pub fn open_device(&self, name: &str) -> Result<VfioDevice> {
        if self.container().is_none() {
            return Err(VfioError::Usage {
                target: format!("VFIO group {}", self.id()),
                reason: format!(
                    "cannot open {name}: the group is in no container; attach it to a VfioContainer first"
                ),
            });
        }
        VfioDevice::open(self, name)
    }

    pub(crate) fn same(&self, other: &VfioGroup) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl AsFd for VfioGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_group_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = VfioGroup::open_path(&dir.path().join("7"), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/7: "), "{e}");
        assert!(e.contains("bind a device of this IOMMU group"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_group_is_an_ioctl_error_naming_the_group() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = VfioGroup::open_path(f.path(), 12).unwrap_err();
        assert!(e.errno().is_some());
        assert!(
            e.to_string()
                .starts_with("VFIO group 12 VFIO_GROUP_GET_STATUS: "),
            "{e}"
        );
    }

    #[test]
    fn not_viable_message_names_the_group_and_the_fix() {
        let e = VfioError::GroupNotViable { group: 9 }.to_string();
        assert!(e.contains("VFIO group 9 is not viable"), "{e}");
        assert!(e.contains("/sys/kernel/iommu_groups/9/devices"), "{e}");
        assert!(e.contains("vfio-pci"), "{e}");
    }
}
