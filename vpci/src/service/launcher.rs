//! The seam between the daemon's bookkeeping and the frontends it runs: a
//! [`FrontendLauncher`] opens a claimed device and starts a frontend on it. The daemon
//! uses the VFIO + UML launcher; host tests use one without devices.

use udriver::pci::PciAddress;

use super::FrontendSpec;
use crate::frontend::FrontendStatus;

/// Why a frontend could not be started or stopped, with the device and the fix.
pub type LaunchError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Starts frontends on claimed devices.
pub trait FrontendLauncher: Send {
    /// Opens `device` (on vfio-pci, in IOMMU group `iommu_group`) and starts serving it
    /// as `spec` says. The frontend runs on threads of its own until stopped.
    fn start(
        &mut self,
        device: PciAddress,
        iommu_group: u32,
        spec: &FrontendSpec,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError>;
}

/// A frontend serving one device.
pub trait RunningFrontend: Send {
    /// Its state and counters now.
    fn status(&self) -> FrontendStatus;

    /// Disconnects its guest, quiesces the device, removes its socket and closes the
    /// device, so that the device can be given back to its driver.
    fn stop(self: Box<Self>) -> Result<FrontendStatus, LaunchError>;
}
