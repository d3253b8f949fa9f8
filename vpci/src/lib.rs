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
//! vector's new state as an [`MsiRouting`].
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

#![forbid(unsafe_code)]
// 455 public items (152 of them config_regs' register constants) have no doc yet, and
// the modules are moving into folders (issue 18): their docs come with the move. Remove
// this line to list them.
#![allow(missing_docs)]

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
pub mod frontend;
pub mod function;
pub mod host_bridge;
pub mod intx;
pub mod msi;
pub mod msi_routing;
pub mod msix;
pub mod passthrough;
pub mod service;
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
pub use passthrough::{PassthroughDevice, PassthroughError, PassthroughFunction};
pub use test_device::{TestDevice, TestDeviceConfig};
