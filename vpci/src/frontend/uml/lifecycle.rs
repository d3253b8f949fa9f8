//! The guest lifecycle: one function served to one UML guest after another.
//!
//! [`Shared`] is what the frontend, its server thread and each guest's back-end hold;
//! its [`ServedFunction`] is the function and everything the current guest set up
//! around it, behind one lock. A guest's memory is accepted (mapped for the device's
//! DMA) when UML sends its memory table; when the guest resets the device, leaves or
//! dies, the device is stopped, its memory unmapped (unless only reset) and the
//! function rebuilt from the device, so the next guest finds it fresh; when the
//! frontend stops, the device is quiesced and the function given back.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dma::DmaMapper;
use udriver::vfio::IrqIndex;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::commands::CommandQueue;
use super::dma::GuestDma;
use super::error::UmlError;
use super::interrupts::{Interrupts, Watcher};
use super::WorkerOptions;
use crate::config_regs::{command, header};
use crate::frontend::FrontendCounters;
use crate::passthrough::{PassthroughDevice, PassthroughFunction};

/// The guest memory vhost-user-backend keeps for the vrings.
pub(super) type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// State shared by the frontend, its server thread and each guest's back-end.
pub(super) struct Shared<D: PassthroughDevice> {
    pub(super) socket: PathBuf,
    pub(super) device: String,
    pub(super) mapper: Arc<dyn DmaMapper>,
    pub(super) served: Mutex<ServedFunction<D>>,
    pub(super) counters: FrontendCounters,
    pub(super) worker: WorkerOptions,
}

impl<D: PassthroughDevice> Shared<D> {
    pub(super) fn new(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        socket: PathBuf,
        worker: WorkerOptions,
    ) -> Self {
        Self {
            socket,
            device: function.device().name().to_string(),
            mapper,
            served: Mutex::new(ServedFunction::new(function)),
            counters: FrontendCounters::default(),
            worker,
        }
    }

    pub(super) fn served(&self) -> MutexGuard<'_, ServedFunction<D>> {
        // Every update under the lock leaves the state usable (a panic in the device
        // code is the only way to poison it), so a poisoned lock is taken over.
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn error(&self, what: impl std::fmt::Display) {
        self.counters.error(format!(
            "{} ({}): {what}",
            self.socket.display(),
            self.device
        ));
    }
}

/// The function and everything one guest set up around it.
pub(super) struct ServedFunction<D: PassthroughDevice> {
    /// `None` only after rebuilding it failed (see `lost`) or after `stop` took it.
    pub(super) function: Option<PassthroughFunction<D>>,
    /// Why the function could not be rebuilt for the next guest.
    pub(super) lost: Option<String>,
    dma: GuestDma,
    pub(super) interrupts: Interrupts,
    /// UML's memory, once accepted: queues are served only from it.
    pub(super) memory: Option<Memory>,
    /// Changes whenever `memory` does: a polling window's snapshot of the memory is
    /// used only while it is current.
    pub(super) generation: u64,
    /// Batches a polling worker served, for timing one in some (see the worker).
    pub(super) polled_batches: u32,
    pub(super) commands: CommandQueue,
}

/// How long vectors stay wired after bus mastering went off, so interrupt moderation
/// timers the device armed for its last interrupts run out first. QEMU 7.2's e1000e
/// aborts when such a timer expires after MSI-X was disabled; a guest that leaves
/// (or is killed) mid-traffic is just when one is armed. It costs a departing guest
/// 40 ms.
const VECTOR_SETTLE: Duration = Duration::from_millis(40);

/// Bus mastering off, a settle time if MSI/MSI-X vectors are live, then
/// [`PassthroughFunction::quiesce`] (vectors off).
fn stop_device<D: PassthroughDevice>(
    function: &mut PassthroughFunction<D>,
) -> Result<(), UmlError> {
    let device = function.device();
    let mut bytes = [0u8; 2];
    if device.read_config(header::COMMAND, &mut bytes).is_ok() {
        let off = u16::from_le_bytes(bytes) & !command::BUS_MASTER;
        let _ = device.write_config(header::COMMAND, &off.to_le_bytes());
    }
    if function
        .live_irqs()
        .is_some_and(|live| live.index != IrqIndex::Intx)
    {
        std::thread::sleep(VECTOR_SETTLE);
    }
    function.quiesce().map_err(UmlError::Quiesce)
}

/// Watches nothing: for resets with no vring worker left.
struct NoWatcher;

impl Watcher for NoWatcher {
    fn watch(&self, _fd: RawFd, _id: u64) -> io::Result<()> {
        Ok(())
    }
    fn unwatch(&self, _fd: RawFd, _id: u64) -> io::Result<()> {
        Ok(())
    }
}

impl<D: PassthroughDevice> ServedFunction<D> {
    fn new(function: PassthroughFunction<D>) -> Self {
        Self {
            function: Some(function),
            lost: None,
            dma: GuestDma::default(),
            interrupts: Interrupts::default(),
            memory: None,
            generation: 0,
            polled_batches: 0,
            commands: CommandQueue::new(),
        }
    }

    /// The guest is gone (or reset the device): the device stops (bus mastering and
    /// vectors off), the guest's memory is unmapped unless `keep_memory` (a reset
    /// leaves the memory table in force), and the function is rebuilt from the device
    /// so the guest finds it freshly reset. Every step is tried; the errors are
    /// returned.
    pub(super) fn reset(
        &mut self,
        mapper: &Arc<dyn DmaMapper>,
        watcher: Option<&dyn Watcher>,
        counters: &FrontendCounters,
        keep_memory: bool,
    ) -> Vec<UmlError> {
        let mut errors = Vec::new();
        self.interrupts.clear(watcher.unwrap_or(&NoWatcher));
        if let Some(function) = self.function.as_mut() {
            errors.extend(stop_device(function).err());
        }
        if !keep_memory {
            errors.extend(self.forget_memory(mapper, counters));
        }
        if let Some(function) = self.function.take() {
            match PassthroughFunction::new(function.into_device()) {
                Ok(function) => self.function = Some(function),
                Err(e) => {
                    let why = UmlError::Rebuild(e);
                    self.lost = Some(why.to_string());
                    errors.push(why);
                }
            }
        }
        errors
    }

    /// Stop the device and unmap everything, for giving the function back.
    pub(super) fn quiesce(
        &mut self,
        mapper: &Arc<dyn DmaMapper>,
        counters: &FrontendCounters,
    ) -> Vec<UmlError> {
        let mut errors = Vec::new();
        self.interrupts.clear(&NoWatcher);
        if let Some(function) = self.function.as_mut() {
            errors.extend(stop_device(function).err());
        }
        errors.extend(self.forget_memory(mapper, counters));
        errors
    }

    /// Map UML's memory for the device's DMA (IOVA = UML physical address), replacing
    /// what an earlier memory table mapped, and serve the queues from it if that
    /// worked. Returns the bytes mapped.
    pub(super) fn accept_memory(
        &mut self,
        mapper: &Arc<dyn DmaMapper>,
        counters: &FrontendCounters,
        memory: &Memory,
    ) -> Result<u64, UmlError> {
        let result = self.dma.map(mapper, &memory.memory());
        counters
            .dma_mapped_bytes
            .store(self.dma.mapped_bytes(), Relaxed);
        self.memory = result.is_ok().then(|| memory.clone());
        self.generation += 1;
        result.map_err(UmlError::GuestMemory)
    }

    /// Unmap UML's memory and stop serving from it.
    fn forget_memory(
        &mut self,
        mapper: &Arc<dyn DmaMapper>,
        counters: &FrontendCounters,
    ) -> Option<UmlError> {
        let unmapped = self.dma.unmap_all(mapper);
        counters
            .dma_mapped_bytes
            .store(self.dma.mapped_bytes(), Relaxed);
        self.memory = None;
        self.generation += 1;
        unmapped.err().map(UmlError::Unmap)
    }
}
