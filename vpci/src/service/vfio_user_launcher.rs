//! Claimed devices served to vfio-user clients: the device opened through VFIO in its
//! group's container (the launcher's lease), a [`VfioUserServer`] on the socket, the
//! container's usable IOVA windows given to the DMA table so that a map outside them
//! is refused with a clear error.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dma::{DmaAccess, DmaMapping, HostVirtAddr, Iova};
use serde::{Deserialize, Serialize};
use udriver::pci::PciAddress;
use udriver::vfio::DeviceHandover;

use super::launcher::{LaunchError, RunningFrontend};
use super::uml_launcher::{GroupLease, UmlLauncher};
use crate::frontend::vfio_user::{
    DmaLimits, ServerOptions, ServerState, SessionOptions, VfioUserServer, VfioUserStatus,
};
use crate::frontend::FrontendStatus;
use crate::handover::{FdBag, FdSlot};
use crate::passthrough::{PassthroughFunction, VfioPassthroughDevice};

/// What a `vfio-user:` spec asks for.
pub(super) struct VfioUserOptions {
    pub(super) socket: PathBuf,
    pub(super) direct_mmio: bool,
    pub(super) user: Option<u32>,
}

impl VfioUserOptions {
    /// What `spec` asks for, if it is a `vfio-user:` spec.
    pub(super) fn of(spec: &super::FrontendSpec) -> Option<VfioUserOptions> {
        match spec {
            super::FrontendSpec::VfioUser {
                socket,
                direct_mmio,
                user,
            } => Some(VfioUserOptions {
                socket: socket.clone(),
                direct_mmio: *direct_mmio,
                user: *user,
            }),
            super::FrontendSpec::Uml { .. } => None,
        }
    }
}

impl From<VfioUserStatus> for FrontendStatus {
    fn from(status: VfioUserStatus) -> Self {
        FrontendStatus {
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
            ..FrontendStatus::default()
        }
    }
}

fn server_options(
    lease: &GroupLease,
    options: VfioUserOptions,
) -> Result<ServerOptions, LaunchError> {
    let iova_ranges = lease.container.iommu_info()?.iova_ranges;
    Ok(ServerOptions {
        socket: options.socket,
        allowed_uid: options.user,
        session: SessionOptions {
            direct_mmio: options.direct_mmio,
            dma_limits: DmaLimits { iova_ranges },
        },
    })
}

/// Open `device` in the lease's container and serve it on the socket.
pub(super) fn start(
    lease: Arc<GroupLease>,
    device: PciAddress,
    options: VfioUserOptions,
) -> Result<Box<dyn RunningFrontend>, LaunchError> {
    let vfio = lease.group.open_device(&device.to_string())?;
    let function = PassthroughFunction::new(VfioPassthroughDevice::new(vfio)?)?;
    let options = server_options(&lease, options)?;
    let server = VfioUserServer::start(function, Arc::new(lease.container.clone()), options)?;
    Ok(Box::new(VfioUserServed {
        server,
        lease: Some(lease),
    }))
}

/// An IOMMU group and its container, carried to a successor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CarriedGroup {
    pub(super) id: u32,
    pub(super) group: FdSlot,
    pub(super) container: FdSlot,
    /// The container's mappings: iova, length, host address (the predecessor's),
    /// access.
    mappings: Vec<(u64, u64, u64, CarriedAccess)>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum CarriedAccess {
    DeviceReads,
    DeviceWrites,
    ReadWrite,
}

impl CarriedGroup {
    pub(super) fn mappings(&self) -> Result<Vec<DmaMapping>, LaunchError> {
        self.mappings
            .iter()
            .map(|&(iova, len, vaddr, access)| {
                let access = match access {
                    CarriedAccess::DeviceReads => DmaAccess::DeviceReads,
                    CarriedAccess::DeviceWrites => DmaAccess::DeviceWrites,
                    CarriedAccess::ReadWrite => DmaAccess::ReadWrite,
                };
                DmaMapping::new(Iova(iova), HostVirtAddr(vaddr), len, access)
                    .map_err(|e| LaunchError::from(format!("a carried DMA mapping: {e}")))
            })
            .collect()
    }
}

/// A vfio-user frontend carried to a successor.
#[derive(Debug, Serialize, Deserialize)]
struct Carried {
    group: CarriedGroup,
    device: FdSlot,
    name: String,
    enabled_irqs: u32,
    server: ServerState,
}

/// Take over the vfio-user frontend a predecessor handed over for `device`.
pub(super) fn resume(
    launcher: &mut UmlLauncher,
    device: PciAddress,
    options: VfioUserOptions,
    state: &serde_json::Value,
    bag: &mut FdBag,
) -> Result<Box<dyn RunningFrontend>, LaunchError> {
    let carried: Carried = Carried::deserialize(state)
        .map_err(|e| format!("{device}: the carried vfio-user state does not parse: {e}"))?;
    let lease = launcher.resume_lease(&carried.group, bag)?;
    let vfio = lease.group.resume_device(DeviceHandover {
        fd: bag.take(carried.device)?,
        name: carried.name.clone(),
        enabled_irqs: carried.enabled_irqs,
    })?;
    let function_device = VfioPassthroughDevice::new(vfio)?;
    let options = server_options(&lease, options)?;
    let server = VfioUserServer::resume(
        function_device,
        Arc::new(lease.container.clone()),
        options,
        &carried.server,
        bag,
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
    fn status(&self) -> FrontendStatus {
        self.server.status().into()
    }

    fn stop(self: Box<Self>) -> Result<FrontendStatus, LaunchError> {
        let VfioUserServed { server, lease } = *self;
        let status = server.status().into();
        // The function owns the device fd: closed before the group leaves the
        // container, so the kernel releases both.
        let stopped = server.stop().map(drop);
        drop(lease);
        stopped?;
        Ok(status)
    }

    fn handover_refusal(&self) -> Option<String> {
        None
    }

    fn hand_over(self: Box<Self>, bag: &mut FdBag) -> Result<serde_json::Value, LaunchError> {
        let VfioUserServed { server, lease } = *self;
        let lease = lease.ok_or("the device's VFIO group is gone")?;
        // The successor keeps the group attached: this process must not detach it,
        // whatever happens next.
        lease.handed_over.store(true, Ordering::SeqCst);
        let (server, device) = server.hand_over(bag)?;
        let device = device.hand_over()?;
        let (container, mappings) = lease.container.hand_over()?;
        let group = CarriedGroup {
            id: lease.group.id(),
            group: bag.put(lease.group.hand_over()?),
            container: bag.put(container),
            mappings: mappings
                .iter()
                .map(|m| {
                    let access = match m.access {
                        DmaAccess::DeviceReads => CarriedAccess::DeviceReads,
                        DmaAccess::DeviceWrites => CarriedAccess::DeviceWrites,
                        DmaAccess::ReadWrite => CarriedAccess::ReadWrite,
                    };
                    (m.iova().0, m.len(), m.vaddr.0, access)
                })
                .collect(),
        };
        let carried = Carried {
            group,
            device: bag.put(device.fd),
            name: device.name,
            enabled_irqs: device.enabled_irqs,
            server,
        };
        Ok(serde_json::to_value(carried)?)
    }
}
