//! The guest side of udrv: a virtual PCI bus that a guest enumerates, with config space
//! virtualised over real devices, and the frontends that serve it to a VMM.

pub mod access_width;
pub mod bar;
pub mod bar_decoder;
pub mod bar_window;
pub mod bus;
pub mod capability;
pub mod config_ports;
pub mod config_regs;
pub mod config_space;
pub mod description;
pub mod devfn;
pub mod ecam;
pub mod function;
pub mod host_bridge;
pub mod intx;
pub mod msi;
pub mod msi_routing;
pub mod msix;
pub mod test_device;

pub use access_width::AccessWidth;
pub use bar::{AddressSpace, BarDefinition, BarError, BarIndex, BarKind, BarLayout};
pub use bar_decoder::DecodedBar;
pub use bar_window::AddressWindow;
pub use bus::{AccessTarget, BarStatus, BusConfig, BusError, BusEvent, VirtualBus};
pub use capability::{Capability, ExtendedCapability};
pub use config_space::{ConfigSize, ConfigSpace, ConfigSpaceError, RegisterMask, Type0Header};
pub use description::BusDescription;
pub use devfn::DevFn;
pub use function::{FunctionError, PciFunction};
pub use host_bridge::HostBridge;
pub use intx::{IntxPin, IntxRoute, IntxSwizzle};
pub use msi::{MsiCapability, MsiConfig};
pub use msi_routing::{InterruptKind, MsiMessage, MsiRouting};
pub use msix::{MsixCapability, MsixConfig};
pub use test_device::{TestDevice, TestDeviceConfig};
