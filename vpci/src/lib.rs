//! The guest side of udrv: a virtual PCI bus that a guest enumerates, with config space
//! virtualised over real devices, and the frontends that serve it to a VMM.
//!
//! # The bus
//!
//! A [`VirtualBus`] is one root bus: a [`HostBridge`] at 00.0 and any [`PciFunction`]s,
//! reached through ECAM ([`VirtualBus::mmio_read`]/[`mmio_write`](VirtualBus::mmio_write))
//! and the 0xCF8/0xCFC ports ([`VirtualBus::pio_read`]/[`pio_write`](VirtualBus::pio_write)),
//! which also dispatch BAR accesses to the function, BAR and offset that decodes them.
//! Changes a VMM acts on (a BAR mapped or unmapped at a guest address, an MSI/MSI-X
//! vector reprogrammed) come out of [`VirtualBus::take_events`]; [`VirtualBus::describe`]
//! gives the plain [`BusDescription`] firmware tables are built from.
//!
//! ```
//! use vpci::{AccessTarget, BusConfig, DevFn, TestDevice, TestDeviceConfig, VirtualBus};
//!
//! let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
//! let device = TestDevice::new(&TestDeviceConfig::full(0x1af4, 0x1100)).unwrap();
//! let slot = DevFn::new(3, 0).unwrap();
//! bus.add_function(slot, Box::new(device)).unwrap();
//!
//! // A guest reads 03.0's vendor and device ID through ECAM.
//! let ecam = bus.ecam_window().base;
//! let mut id = [0u8; 4];
//! bus.mmio_read(ecam | u64::from(slot.raw()) << 12, &mut id).unwrap();
//! assert_eq!(u32::from_le_bytes(id), 0x1100_1af4);
//!
//! // Firmware placed BAR1; an access there lands in 03.0 BAR1.
//! let bar1 = bus.bar_status(slot)[1].programmed.unwrap();
//! let target = bus.mmio_write(bar1 + 8, &[1, 2, 3, 4]).unwrap();
//! assert!(matches!(target, AccessTarget::Bar { offset: 8, .. }));
//! ```
//!
//! # Functions
//!
//! A function's config is a [`ConfigSpace`]: bytes with per-bit masks (read-only,
//! read-write, write-1-to-clear), BAR and ROM sizing that falls out of those masks, and
//! capability lists that can be walked, extended and unlinked. [`MsiCapability`] and
//! [`MsixCapability`] keep a guest's MSI/MSI-X programming virtually and report each
//! vector's new state as an [`MsiRouting`]; [`MessageInterrupts`] holds both for a
//! function, with the MSI-X table and PBA it traps in its BARs.
//!
//! A passthrough function (a udriver VFIO device behind a virtual function) is built
//! from the same parts: a `ConfigSpace` loaded with [`ConfigSpace::from_bytes`] from
//! the device's real config, whose virtualised registers (BARs sized from the VFIO
//! regions, command decode bits, interrupt line, ROM) get guest-writable masks; MSI and
//! MSI-X taken over with [`MsiCapability::attach`]/[`MsixCapability::attach`], whose
//! `MsiRouting` changes become VFIO vector setup (eventfd per enabled vector, masked
//! vectors pending); the MSI-X table and PBA trapped at
//! [`MsixCapability::table_range`]/[`pba_range`](MsixCapability::pba_range) and the rest
//! of the BAR mapped where [`BusEvent::BarMapped`] says; capabilities that must not
//! reach the guest unlinked with [`ConfigSpace::remove_capability`] /
//! [`remove_extended_capability`](ConfigSpace::remove_extended_capability). Bits that
//! are not virtualised are read from and written to the device.
//! [`PassthroughFunction`] (module [`passthrough`]) is that function, over a
//! [`PassthroughDevice`] seam that VFIO devices and host-test fakes implement.
//!
//! # Layout
//!
//! - [`bus`]: the [`VirtualBus`], the [`PciFunction`] trait, the host bridge, ECAM and
//!   the config ports, [`DevFn`] and the [`BusDescription`];
//! - [`config`]: the config-space model ([`ConfigSpace`], the register layout,
//!   capability lists, access widths);
//! - [`bar`]: BAR definitions, decoding and the windows BARs are placed in;
//! - [`interrupt`]: MSI, MSI-X, their routing changes, and INTx wiring;
//! - [`passthrough`]: a real device as a function;
//! - [`frontend`] and [`service`]: serving a bus to a VMM, and the `udrv serve` daemon;
//! - `test_device` (feature `test-device`, on in this crate's own tests): a
//!   configurable emulated function for tests.

#![forbid(unsafe_code)]

pub mod bar;
pub mod bus;
pub mod config;
pub mod frontend;
pub mod handover;
pub mod interrupt;
pub mod passthrough;
pub mod service;
pub mod socket_file;
#[cfg(any(test, feature = "test-device"))]
pub mod test_device;

pub use bar::decoder::DecodedBar;
pub use bar::window::AddressWindow;
pub use bar::{AddressSpace, BarDefinition, BarError, BarIndex, BarKind, BarLayout};
pub use bus::description::BusDescription;
pub use bus::devfn::DevFn;
pub use bus::function::{FunctionError, PciFunction};
pub use bus::host_bridge::HostBridge;
pub use bus::{AccessTarget, BarStatus, BusConfig, BusError, BusEvent, VirtualBus};
pub use config::access_width::AccessWidth;
pub use config::capability::{Capability, ExtendedCapability};
pub use config::space::{ConfigSize, ConfigSpace, ConfigSpaceError, RegisterMask, Type0Header};
pub use interrupt::intx::{IntxPin, IntxRoute, IntxSwizzle};
pub use interrupt::message::MessageInterrupts;
pub use interrupt::msi::{MsiCapability, MsiConfig};
pub use interrupt::msix::{MsixCapability, MsixConfig};
pub use interrupt::routing::{InterruptKind, MsiMessage, MsiRouting};
pub use passthrough::{PassthroughDevice, PassthroughError, PassthroughFunction};
#[cfg(any(test, feature = "test-device"))]
pub use test_device::{TestDevice, TestDeviceConfig};
