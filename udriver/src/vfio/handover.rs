//! Carrying an open container, group and device into a successor process (`udrv
//! serve`'s upgrade) with nothing about them changed: no mapping removed, no group
//! detached, no interrupt disabled, bus mastering left as it is.
//!
//! The kernel keeps a container's IOMMU mappings, a group's place in it and a
//! device's interrupt wiring for as long as any fd of theirs is open. A process hands
//! duplicates of those fds to its successor (over a UNIX socket), together with what
//! the fds alone do not tell: the container's mappings and which IRQ indexes the
//! device has enabled. The successor rebuilds the same objects around them with
//! [`VfioContainer::resume`], [`VfioGroup::resume`] and [`VfioGroup::resume_device`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use dma::DmaMapping;

use super::container::IommuBackend;
use super::device::VfioDevice;
use super::error::{Result, VfioError};
use super::group::{GroupInner, VfioGroup};
use super::VfioContainer;

/// A device given up by this process for a successor to drive.
#[derive(Debug)]
pub struct DeviceHandover {
    /// A duplicate of the device fd.
    pub fd: OwnedFd,
    /// The device's name (`0000:00:04.0`).
    pub name: String,
    /// Bit `i` set: IRQ index `i` is enabled.
    pub enabled_irqs: u32,
}

fn duplicate(what: String, fd: impl AsFd) -> Result<OwnedFd> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| VfioError::Usage {
            target: what,
            reason: format!("duplicating its fd for the successor failed: {e}"),
        })
}

impl VfioContainer {
    /// A duplicate of the container fd and its mappings, for a successor.
    pub fn hand_over(&self) -> Result<(OwnedFd, Vec<DmaMapping>)> {
        Ok((duplicate("VFIO container".into(), self)?, self.mappings()))
    }

    /// The container behind `fd`, handed over by a predecessor whose groups are
    /// attached (so the IOMMU model is set) and whose `mappings` the kernel holds.
    pub fn resume(fd: OwnedFd, mappings: &[DmaMapping]) -> Result<VfioContainer> {
        let container = VfioContainer::from_fd(fd, IommuBackend::Type1v2);
        let info = container.query_iommu_info()?;
        let mut state = container.lock();
        state.iommu_set = true;
        // The kernel's count of mappings still available leaves out those it holds.
        state.max_mappings = info.dma_avail.map(|n| n as usize + mappings.len());
        container
            .0
            .page_size
            .store(info.min_page_size(), Ordering::Relaxed);
        state.info = Some(info);
        for mapping in mappings {
            state.mappings.insert(*mapping);
        }
        drop(state);
        Ok(container)
    }
}

impl VfioGroup {
    /// A duplicate of the group fd, for a successor.
    pub fn hand_over(&self) -> Result<OwnedFd> {
        duplicate(format!("VFIO group {}", self.id()), self)
    }

    /// Group `id` behind `fd`, handed over by a predecessor that had attached it to
    /// the container `container` was resumed from.
    pub fn resume(fd: OwnedFd, id: u32, container: &VfioContainer) -> VfioGroup {
        let group = VfioGroup(Arc::new(GroupInner {
            id,
            file: fd.into(),
            container: Mutex::new(Some(container.clone())),
        }));
        let mut state = container.lock();
        state.groups.push((id, Arc::downgrade(&group.0)));
        group
    }

    /// A device of this group handed over by a predecessor (see
    /// [`VfioDevice::hand_over`]).
    pub fn resume_device(&self, handover: DeviceHandover) -> Result<VfioDevice> {
        VfioDevice::from_fd(self, &handover.name, handover.fd, handover.enabled_irqs)
    }
}

impl VfioDevice {
    /// Gives the device up to a successor as it is: a duplicate of its fd and the
    /// IRQ indexes it has enabled. Dropping this handle then closes only its own fd,
    /// without quiescing the device.
    pub fn hand_over(mut self) -> Result<DeviceHandover> {
        let handover = DeviceHandover {
            fd: duplicate(self.name().to_string(), &self)?,
            name: self.name().to_string(),
            enabled_irqs: self.enabled_irq_bits(),
        };
        self.keep_running_on_drop();
        Ok(handover)
    }
}
