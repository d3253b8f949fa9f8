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
use std::sync::{Arc, Weak};

use tracing::{debug, warn};
use udriver::pci::PciAddress;
use udriver::vfio::{VfioContainer, VfioGroup};

use super::control::FrontendReport;
use super::launcher::{FrontendLauncher, LaunchError, RunningFrontend};
use super::FrontendSpec;
use crate::frontend::{FrontendStatus, UmlFrontend};
use crate::passthrough::{PassthroughFunction, VfioPassthroughDevice};

impl From<FrontendStatus> for FrontendReport {
    fn from(status: FrontendStatus) -> Self {
        FrontendReport {
            socket: status.socket,
            guest_connected: status.guest_connected,
            guests_served: status.guests_served,
            config_accesses: status.config_accesses,
            mmio_reads: status.mmio_reads,
            mmio_writes: status.mmio_writes,
            interrupts: status.interrupts,
            dma_mapped_bytes: status.dma_mapped_bytes,
            last_error: status.last_error,
            vfio_user: None,
        }
    }
}

/// An IOMMU group in its own container, for as long as a served device of it holds this.
pub(super) struct GroupLease {
    pub(super) container: VfioContainer,
    pub(super) group: VfioGroup,
}

impl Drop for GroupLease {
    fn drop(&mut self) {
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
        let lease = Arc::new(GroupLease { container, group });
        self.groups.retain(|_, weak| weak.strong_count() > 0);
        self.groups.insert(iommu_group, Arc::downgrade(&lease));
        Ok(lease)
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
        let (socket, worker) = match spec {
            FrontendSpec::Uml { socket, worker } => (socket, worker),
            FrontendSpec::VfioUser {
                socket,
                direct_mmio,
                user,
            } => {
                let options = super::vfio_user_launcher::VfioUserOptions {
                    socket: socket.clone(),
                    direct_mmio: *direct_mmio,
                    user: *user,
                };
                return super::vfio_user_launcher::start(lease, device, options);
            }
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
}

/// A device served to UML.
struct UmlServed {
    frontend: UmlFrontend,
    /// Dropped after the device is closed.
    lease: Option<Arc<GroupLease>>,
}

impl RunningFrontend for UmlServed {
    fn status(&self) -> FrontendReport {
        self.frontend.status().into()
    }

    fn stop(self: Box<Self>) -> Result<FrontendReport, LaunchError> {
        let UmlServed { frontend, lease } = *self;
        let status = frontend.status().into();
        // The function owns the device fd: closing it before the group leaves the
        // container is what lets the kernel release both.
        let stopped = frontend.stop().map(drop);
        drop(lease);
        stopped?;
        Ok(status)
    }
}
