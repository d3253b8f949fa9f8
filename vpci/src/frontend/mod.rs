//! Frontends: how a VMM reaches a passthrough function served by udrv.
//!
//! A frontend carries one VMM's protocol to and from a [`PassthroughFunction`]: config
//! and BAR accesses in, interrupts out, and the guest's memory made reachable for the
//! device's DMA.
//!
//! - [`uml`]: User-Mode Linux's PCI over virtio (`CONFIG_UML_PCI_OVER_VIRTIO`), a
//!   vhost-user back-end speaking the [`virtio_pcidev`] wire format. UML's memory
//!   arrives as an fd and is mapped for DMA with IOVA = UML physical address.
//! - [`vfio_user`]: QEMU's `vfio-user-pci`, cloud-hypervisor; the VMM forwards each
//!   DMA mapping, and wires the device's interrupts to its own eventfds.
//! - in-process: a VMM links vpci and calls [`VirtualBus`](crate::VirtualBus) or the
//!   function directly; no frontend needed.
//!
//! [`PassthroughFunction`]: crate::PassthroughFunction

pub mod uml;
pub mod vfio_user;
pub mod virtio_pcidev;

pub use uml::{FrontendError, FrontendStatus, UmlFrontend, WorkerOptions};
