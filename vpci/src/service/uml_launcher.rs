//! The daemon's launcher: claimed devices opened through VFIO and served to User-Mode
//! Linux guests by a [`UmlFrontend`], or to vfio-user clients (see
//! [`vfio_user_launcher`](super::vfio_user_launcher)).
//!
//! Each IOMMU group gets a container (an IOVA space) of its own while one of its
//! devices is served: a UML guest's memory is mapped at IOVA = UML physical address,
//! so two guests — or one guest served two devices, each frontend mapping its memory —
//! would collide in a shared one, and a device must never reach another guest's
//! memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tracing::{debug, warn};
use udriver::pci::PciAddress;
use udriver::vfio::{VfioContainer, VfioGroup};

use super::launcher::{FrontendLauncher, LaunchError, RunningFrontend};
use super::vfio_user_launcher::VfioUserOptions;
use super::FrontendSpec;
use crate::frontend::{FrontendStatus, UmlFrontend};
use crate::handover::FdBag;
use crate::passthrough::{PassthroughFunction, VfioPassthroughDevice};

/// An IOMMU group in its own container, for as long as a served device of it holds this.
pub(super) struct GroupLease {
    pub(super) container: VfioContainer,
    pub(super) group: VfioGroup,
    /// Set once handed to a successor process, which keeps the group attached.
    pub(super) handed_over: AtomicBool,
}

impl GroupLease {
    pub(super) fn new(container: VfioContainer, group: VfioGroup) -> GroupLease {
        GroupLease {
            container,
            group,
            handed_over: AtomicBool::new(false),
        }
    }
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        if self.handed_over.load(Ordering::SeqCst) {
            return;
        }
        // Out of the container, so the group's devices can go back to their drivers
        // and the group be opened again later.
        match self.container.detach(&self.group) {
            Ok(()) => debug!(iommu_group = self.group.id(), "VFIO group released"),
            Err(e) => warn!(iommu_group = self.group.id(), error = %e, "releasing the VFIO group"),
        }
    }
}

/// Opens claimed devices through VFIO and serves them to UML guests.
#[derive(Default)]
pub struct UmlLauncher {
    groups: BTreeMap<u32, Weak<GroupLease>>,
}

impl UmlLauncher {
    /// A launcher; containers are opened as groups are served.
    pub fn new() -> Self {
        Self::default()
    }

    fn lease(&mut self, iommu_group: u32) -> Result<Arc<GroupLease>, LaunchError> {
        if let Some(lease) = self.groups.get(&iommu_group).and_then(Weak::upgrade) {
            return Ok(lease);
        }
        let container = VfioContainer::open()?;
        let group = VfioGroup::open(iommu_group)?;
        container.attach(&group)?;
        Ok(self.keep(iommu_group, GroupLease::new(container, group)))
    }

    fn keep(&mut self, iommu_group: u32, lease: GroupLease) -> Arc<GroupLease> {
        let lease = Arc::new(lease);
        self.groups.retain(|_, weak| weak.strong_count() > 0);
        self.groups.insert(iommu_group, Arc::downgrade(&lease));
        lease
    }

    /// The lease of a group a predecessor handed over: the one already taken over,
    /// or one made from the carried container and group fds.
    pub(super) fn resume_lease(
        &mut self,
        carried: &super::vfio_user_launcher::CarriedGroup,
        bag: &mut FdBag,
    ) -> Result<Arc<GroupLease>, LaunchError> {
        let container_fd = bag.take(carried.container)?;
        let group_fd = bag.take(carried.group)?;
        if let Some(lease) = self.groups.get(&carried.id).and_then(Weak::upgrade) {
            // Another device of the group brought it over; these are duplicates.
            return Ok(lease);
        }
        let mappings = carried.mappings()?;
        let container = VfioContainer::resume(container_fd, &mappings)?;
        let group = VfioGroup::resume(group_fd, carried.id, &container);
        Ok(self.keep(carried.id, GroupLease::new(container, group)))
    }
}

impl FrontendLauncher for UmlLauncher {
    fn start(
        &mut self,
        device: PciAddress,
        iommu_group: u32,
        spec: &FrontendSpec,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError> {
        let lease = self.lease(iommu_group)?;
        let FrontendSpec::Uml { socket, worker } = spec else {
            let options = VfioUserOptions::of(spec)
                .ok_or_else(|| format!("{spec}: a frontend this launcher cannot start"))?;
            return super::vfio_user_launcher::start(lease, device, options);
        };
        let vfio = lease.group.open_device(&device.to_string())?;
        let function = PassthroughFunction::new(VfioPassthroughDevice::new(vfio)?)?;
        let mapper = Arc::new(lease.container.clone());
        let frontend = UmlFrontend::start_with(function, mapper, socket, *worker)?;
        Ok(Box::new(UmlServed {
            frontend,
            lease: Some(lease),
        }))
    }

    fn resume(
        &mut self,
        device: PciAddress,
        spec: &FrontendSpec,
        state: &serde_json::Value,
        bag: &mut FdBag,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError> {
        match VfioUserOptions::of(spec) {
            Some(options) => super::vfio_user_launcher::resume(self, device, options, state, bag),
            None => Err(format!(
                "{device}: a UML frontend cannot be taken over ({UML_HANDOVER_REFUSAL})"
            )
            .into()),
        }
    }
}

/// Why a UML frontend is not carried across an upgrade.
const UML_HANDOVER_REFUSAL: &str = "vhost-user-backend keeps the vhost-user connection's state (acked protocol features, the memory table as the front-end sent it) private and can only serve a connection it accepted itself";

/// A device served to UML.
struct UmlServed {
    frontend: UmlFrontend,
    /// Dropped after the device is closed.
    lease: Option<Arc<GroupLease>>,
}

impl RunningFrontend for UmlServed {
    fn status(&self) -> FrontendStatus {
        self.frontend.status()
    }

    fn stop(self: Box<Self>) -> Result<FrontendStatus, LaunchError> {
        let UmlServed { frontend, lease } = *self;
        let status = frontend.status();
        // The function owns the device fd: closing it before the group leaves the
        // container is what lets the kernel release both.
        let stopped = frontend.stop().map(drop);
        drop(lease);
        stopped?;
        Ok(status)
    }

    fn handover_refusal(&self) -> Option<String> {
        Some(format!(
            "the UML frontend at {} cannot be handed over: {UML_HANDOVER_REFUSAL}; unserve it, or stop and restart udrv serve (the guest reconnects to a fresh device)",
            self.frontend.status().socket.display()
        ))
    }

    fn hand_over(self: Box<Self>, _bag: &mut FdBag) -> Result<serde_json::Value, LaunchError> {
        Err(self.handover_refusal().unwrap_or_default().into())
    }
}
