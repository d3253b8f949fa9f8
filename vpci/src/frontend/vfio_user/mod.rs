//! Serving a passthrough function to a vfio-user client: QEMU's `vfio-user-pci`,
//! cloud-hypervisor's `--user-device`, or any VMM speaking the protocol of QEMU's
//! `docs/interop/vfio-user.rst`.
//!
//! ```text
//! VfioUserServer        listener: socket 0600, peer credentials, one client at a time
//!   wire                a message off the socket (header + fds, then the payload)
//!   protocol            the wire format: parse_request (pure), replies, capabilities
//!   Session             one client: each command against the function, DMA and irqs
//!     regions           BARs, ROM and config through the PassthroughFunction
//!     irqs              DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS -> VFIO_DEVICE_SET_IRQS
//!     derived_intx      INTx udrv raises for a device VFIO gives none (legacy IDE)
//!     dma::DmaTable     DMA_MAP/DMA_UNMAP -> the IOMMU container
//!   status              counters -> VfioUserStatus
//! ```
//!
//! Config space is the function's virtualised view with its capability filter, the
//! same a UML guest gets. BAR accesses (memory and IO-port BARs alike) go through the
//! function to the real device; region sizes are the function's virtual BAR sizes.
//!
//! Interrupts are the client's: the eventfds it sends in DEVICE_SET_IRQS go straight
//! into `VFIO_DEVICE_SET_IRQS`, so the device signals the VMM with no hop through
//! udrv. The function's own vector wiring is off while it is served this way. The
//! exception is a legacy-mode IDE controller, whose ISA interrupt VFIO cannot
//! deliver: it is shown in native mode with an INTx that udrv derives from the
//! device's state and raises on the client's eventfd (see `derived_intx`).
//!
//! DMA: each DMA_MAP with an fd is mmap'd and mapped in the device's IOMMU at the
//! client's address: guest physical, or, with a vIOMMU in the guest, the guest's own
//! per-request mappings. Maps without an fd are recorded, never reachable.
//!
//! Direct MMIO ([`SessionOptions::direct_mmio`]): the BARs' mmap-able parts (the
//! MSI-X table and PBA pages excluded) are offered with sparse-mmap capabilities and
//! the **VFIO device fd**. A sysfs `resourceN` file cannot carry direct access under
//! CONFIG_IO_STRICT_DEVMEM, so the device fd is the only way: with it the client can
//! also reset the device, program its interrupts and write its config (through the
//! kernel's vfio-pci virtualisation), but it never gets the container, so the IOMMU
//! (what the device can reach) stays udrv's. Off by default.
//!
//! A client that disconnects or dies leaves the device quiesced (bus mastering off,
//! every vector it wired off, every mapping removed); the function is rebuilt and the
//! next client on the same socket finds it as after start.
//!
//! ```no_run
//! use std::sync::Arc;
//! use udriver::vfio::{VfioContainer, VfioGroup};
//! use vpci::frontend::vfio_user::{ServerOptions, SessionOptions, VfioUserServer};
//! use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let container = Arc::new(VfioContainer::open()?);
//! let group = VfioGroup::open(12)?;
//! container.attach(&group)?;
//! let device = VfioPassthroughDevice::new(group.open_device("0000:00:04.0")?)?;
//! let function = PassthroughFunction::new(device)?;
//! let server = VfioUserServer::start(
//!     function,
//!     container,
//!     ServerOptions {
//!         socket: "/run/udrv/e1000e.sock".into(),
//!         allowed_uid: None,
//!         session: SessionOptions::default(),
//!     },
//! )?;
//! // qemu-system-x86_64 ... -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/run/udrv/e1000e.sock"}}'
//! println!("{:?}", server.status());
//! let function = server.stop()?;
//! # Ok(()) }
//! ```

mod derived_intx;
mod dma;
mod irqs;
mod listener;
pub mod protocol;
mod regions;
mod session;
mod status;
mod wire;

#[cfg(test)]
mod qemu_tests;
#[cfg(test)]
mod tests;

pub use dma::{DmaLimits, DmaUsage, MSI_WINDOW};
pub use listener::{ClientState, ServerError, ServerOptions, ServerState, VfioUserServer};
pub use session::{Outcome, Session, SessionEndError, SessionOptions, SessionState};
pub use status::{ClientPeer, VfioUserStatus};
pub use wire::{Incoming, MessageReader, ReadError};
