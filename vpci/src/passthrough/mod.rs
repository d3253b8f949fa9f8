//! Passthrough functions: a real device, claimed through VFIO, as a function on the
//! virtual bus.
//!
//! ```text
//! PassthroughFunction<D>     PciFunction: config overlay, virtual BARs, MSI/MSI-X
//!   ConfigOverlay            which config bits are virtual, which the device's
//!   capability_filter        which capabilities the guest may see
//!   express                  PCI Express endpoint shown as a root-bus function
//!   IrqWiring                guest MSI/MSI-X/INTx state -> VFIO vectors + eventfds
//!   D: PassthroughDevice     the device: VfioPassthroughDevice over a VfioDevice
//! ```
//!
//! ```no_run
//! use udriver::vfio::{VfioContainer, VfioGroup};
//! use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};
//! use vpci::{BusConfig, DevFn, VirtualBus};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let container = VfioContainer::open()?;
//! let group = VfioGroup::open(12)?;
//! container.attach(&group)?;
//! let device = VfioPassthroughDevice::new(group.open_device("0000:00:04.0")?)?;
//! let mut bus = VirtualBus::new(BusConfig::default())?;
//! bus.add_function(DevFn::new(4, 0).unwrap(), Box::new(PassthroughFunction::new(device)?))?;
//! # Ok(()) }
//! ```

mod capability_filter;
mod config_overlay;
mod device;
mod error;
mod express;
mod function;
mod irq_wiring;
mod legacy_ide;
mod vfio_device;

// The fuzz targets (fuzz/, built with `--cfg fuzzing`) drive a passthrough function over
// the same fake device as the host tests.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fake_device;
#[cfg(test)]
mod properties;
#[cfg(test)]
pub(crate) mod tests;

pub use capability_filter::{
    HiddenCapability, ALLOWED_CAPABILITIES, ALLOWED_EXTENDED_CAPABILITIES,
};
pub use config_overlay::ConfigOverlay;
pub use device::{DeviceRegion, PassthroughDevice};
pub use error::{DeviceError, PassthroughError};
pub use function::{FunctionState, InterruptVector, PassthroughFunction};
pub use irq_wiring::LiveIrqs;
pub use legacy_ide::{DerivedIntxChannel, DerivedIntxEvent};
pub use vfio_device::VfioPassthroughDevice;
