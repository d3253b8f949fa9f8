//! The seam between the daemon's bookkeeping and the frontends it runs: a
//! [`FrontendLauncher`] opens a claimed device and starts a frontend on it. The daemon
//! uses the VFIO + UML launcher; host tests use one without devices.

use udriver::pci::PciAddress;

use super::FrontendSpec;
use crate::frontend::FrontendStatus;
use crate::handover::FdBag;

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

    /// Takes over the frontend a predecessor process handed over for `device`
    /// (see [`RunningFrontend::hand_over`]): `state` is what it wrote, its fds are
    /// in `bag`. Nothing the frontend's guest depends on is redone.
    fn resume(
        &mut self,
        device: PciAddress,
        spec: &FrontendSpec,
        state: &serde_json::Value,
        bag: &mut FdBag,
    ) -> Result<Box<dyn RunningFrontend>, LaunchError>;
}

/// A frontend serving one device.
pub trait RunningFrontend: Send {
    /// Its state and counters now.
    fn status(&self) -> FrontendStatus;

    /// Disconnects its guest, quiesces the device, removes its socket and closes the
    /// device, so that the device can be given back to its driver.
    fn stop(self: Box<Self>) -> Result<FrontendStatus, LaunchError>;

    /// Why this frontend cannot be handed to a successor process, if it cannot.
    fn handover_refusal(&self) -> Option<String>;

    /// Gives the frontend up to a successor process as it is: its socket, its
    /// guest's connection, the device and its container stay open and untouched;
    /// their fds go into `bag`, the rest into the returned state.
    fn hand_over(self: Box<Self>, bag: &mut FdBag) -> Result<serde_json::Value, LaunchError>;
}
