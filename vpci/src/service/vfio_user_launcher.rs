//! Claimed devices served to vfio-user clients: the device opened through VFIO in its
//! group's container (the launcher's lease), a [`VfioUserServer`] on the socket, the
//! container's usable IOVA windows given to the DMA table so that a map outside them
//! is refused with a clear error.

use std::path::PathBuf;
use std::sync::Arc;

use udriver::pci::PciAddress;

use super::control::FrontendReport;
use super::launcher::{LaunchError, RunningFrontend};
use super::uml_launcher::GroupLease;
use crate::frontend::vfio_user::{
    DmaLimits, ServerOptions, SessionOptions, VfioUserServer, VfioUserStatus,
};
use crate::passthrough::{PassthroughFunction, VfioPassthroughDevice};

/// What a `vfio-user:` spec asks for.
pub(super) struct VfioUserOptions {
    pub(super) socket: PathBuf,
    pub(super) direct_mmio: bool,
    pub(super) user: Option<u32>,
}

impl From<VfioUserStatus> for FrontendReport {
    fn from(status: VfioUserStatus) -> Self {
        FrontendReport {
            socket: status.socket.clone(),
            guest_connected: status.client.is_some(),
            guests_served: status.clients_served,
            config_accesses: 0,
            mmio_reads: status.region_reads,
            mmio_writes: status.region_writes,
            interrupts: 0,
            dma_mapped_bytes: status.dma_mapped_bytes,
            last_error: status.last_error.clone(),
            vfio_user: Some(status),
        }
    }
}

/// Open `device` in the lease's container and serve it on the socket.
pub(super) fn start(
    lease: Arc<GroupLease>,
    device: PciAddress,
    options: VfioUserOptions,
) -> Result<Box<dyn RunningFrontend>, LaunchError> {
    let vfio = lease.group.open_device(&device.to_string())?;
    let function = PassthroughFunction::new(VfioPassthroughDevice::new(vfio)?)?;
    let iova_ranges = lease.container.iommu_info()?.iova_ranges;
    let server = VfioUserServer::start(
        function,
        Arc::new(lease.container.clone()),
        ServerOptions {
            socket: options.socket,
            allowed_uid: options.user,
            session: SessionOptions {
                direct_mmio: options.direct_mmio,
                dma_limits: DmaLimits { iova_ranges },
            },
        },
    )?;
    Ok(Box::new(VfioUserServed {
        server,
        lease: Some(lease),
    }))
}

/// A device served to vfio-user clients.
struct VfioUserServed {
    server: VfioUserServer<VfioPassthroughDevice>,
    /// Dropped after the device is closed.
    lease: Option<Arc<GroupLease>>,
}

impl RunningFrontend for VfioUserServed {
    fn status(&self) -> FrontendReport {
        self.server.status().into()
    }

    fn stop(self: Box<Self>) -> Result<FrontendReport, LaunchError> {
        let VfioUserServed { server, lease } = *self;
        let status = server.status().into();
        // The function owns the device fd: closed before the group leaves the
        // container, so the kernel releases both.
        let stopped = server.stop().map(drop);
        drop(lease);
        stopped?;
        Ok(status)
    }
}
