//! The vhost-user back-end one UML guest talks to: its command queue served from the
//! passthrough function, its memory mapped for DMA, its vectors delivered on the irq
//! queue.
//!
//! Two threads touch a guest's state: vhost-user-backend's request thread (memory
//! tables, resets) and its vring worker (kicks and vector eventfds). Both go through
//! [`Shared::served`]; the worker takes it once per batch of commands, and a polling
//! worker (see [`polling`](super::polling)) holds no lock between looks at the queue.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use dma::DmaMapper;
use nix::sys::eventfd::{EfdFlags, EventFd};
use udriver::vfio::IrqIndex;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::commands::{CommandQueue, RoundOptions};
use super::dma::GuestDma;
use super::error::UmlError;
use super::interrupts::{Interrupts, Watcher};
use super::polling::PendingEvents;
use super::ring::Ring;
use super::status::Counters;
use super::WorkerOptions;
use crate::config_regs::{command, header};
use crate::passthrough::{PassthroughDevice, PassthroughFunction};
use crate::PciFunction;

/// The guest memory vhost-user-backend keeps for the vrings.
pub(super) type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Queue 0: commands from UML. Queue 1: interrupt buffers UML posts.
const CMD_QUEUE: u16 = 0;
const IRQ_QUEUE: u16 = 1;
const QUEUES: usize = 2;
/// The worker's own event: commands were left for another round (epoll id; 2 is the
/// exit event).
const RESUME: u16 = 3;

/// UML's `MAX_SUPPORTED_QUEUE_SIZE`.
const MAX_QUEUE_SIZE: usize = 256;
/// `VIRTIO_F_VERSION_1`.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// State shared by the frontend, its server thread and each guest's back-end.
pub(super) struct Shared<D: PassthroughDevice> {
    pub(super) socket: PathBuf,
    pub(super) device: String,
    pub(super) mapper: Arc<dyn DmaMapper>,
    pub(super) served: Mutex<Served<D>>,
    pub(super) counters: Counters,
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
            served: Mutex::new(Served::new(function)),
            counters: Counters::default(),
            worker,
        }
    }

    pub(super) fn served(&self) -> MutexGuard<'_, Served<D>> {
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
pub(super) struct Served<D: PassthroughDevice> {
    /// `None` only after rebuilding it failed (see `lost`) or after `stop` took it.
    pub(super) function: Option<PassthroughFunction<D>>,
    /// Why the function could not be rebuilt for the next guest.
    pub(super) lost: Option<String>,
    dma: GuestDma,
    interrupts: Interrupts,
    memory: Option<Memory>,
    /// Changes whenever `memory` does: a polling window's snapshot of the memory is
    /// used only while it is current.
    generation: u64,
    /// Batches a polling worker served, for timing one in [`TIMED_EVERY`].
    polled_batches: u32,
    commands: CommandQueue,
}

/// A polling worker times one batch in this many: a clock read costs about 120 ns
/// under emulation (TCG), and a served read a few µs.
const TIMED_EVERY: u32 = 16;

/// UML's memory as one polling window uses it.
pub(super) struct Snapshot {
    pub(super) mem: Arc<GuestMemoryMmap>,
    generation: u64,
}

/// What a polling window knows of the command queue: its ring in the window's
/// snapshot of UML's memory, and how many commands were taken from it.
pub(super) struct Look<'m> {
    pub(super) ring: Ring<'m>,
    pub(super) taken: u16,
    snapshot: &'m Snapshot,
}

/// How long vectors stay wired after bus mastering went off, so interrupt moderation
/// timers the device armed for its last interrupts run out first. QEMU 7.2's e1000e
/// aborts when such a timer expires after MSI-X was disabled; a guest that leaves
/// (or is killed) mid-traffic is just when one is armed. It costs a departing guest
/// 40 ms.
const VECTOR_SETTLE: Duration = Duration::from_millis(40);

/// Bus mastering off, a settle time if MSI/MSI-X vectors are live, then
/// [`PassthroughFunction::quiesce`] (vectors off).
fn stop_device<D: PassthroughDevice>(function: &mut PassthroughFunction<D>) -> Result<(), String> {
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
    function
        .quiesce()
        .map_err(|e| format!("quiescing the device: {e}"))
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

impl<D: PassthroughDevice> Served<D> {
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
        counters: &Counters,
        keep_memory: bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        self.interrupts.clear(watcher.unwrap_or(&NoWatcher));
        if let Some(function) = self.function.as_mut() {
            errors.extend(stop_device(function).err());
        }
        if !keep_memory {
            if let Err(e) = self.dma.unmap_all(mapper) {
                errors.push(format!("unmapping the guest's memory: {e}"));
            }
            counters
                .dma_mapped_bytes
                .store(self.dma.mapped_bytes(), Relaxed);
            self.memory = None;
            self.generation += 1;
        }
        if let Some(function) = self.function.take() {
            match PassthroughFunction::new(function.into_device()) {
                Ok(function) => self.function = Some(function),
                Err(e) => {
                    let why = format!("rebuilding the function for the next guest: {e}");
                    self.lost = Some(why.clone());
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
        counters: &Counters,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        self.interrupts.clear(&NoWatcher);
        if let Some(function) = self.function.as_mut() {
            errors.extend(stop_device(function).err());
        }
        if let Err(e) = self.dma.unmap_all(mapper) {
            errors.push(format!("unmapping the guest's memory: {e}"));
        }
        counters
            .dma_mapped_bytes
            .store(self.dma.mapped_bytes(), Relaxed);
        self.memory = None;
        self.generation += 1;
        errors
    }
}

impl<T: VhostUserBackend> Watcher for VringEpollHandler<T> {
    fn watch(&self, fd: RawFd, id: u64) -> io::Result<()> {
        self.register_listener(fd, EventSet::IN, id)
    }
    fn unwatch(&self, fd: RawFd, id: u64) -> io::Result<()> {
        self.unregister_listener(fd, EventSet::IN, id)
    }
}

/// One guest connection's back-end.
pub(super) struct UmlBackend<D: PassthroughDevice + 'static> {
    shared: Arc<Shared<D>>,
    epoll: OnceLock<Weak<VringEpollHandler<Arc<UmlBackend<D>>>>>,
    /// The worker's epoll set as a polling worker looks at it.
    pending: OnceLock<PendingEvents>,
    /// Signalled when a round left commands waiting;
    /// watched on the worker's epoll with id [`RESUME`].
    resume: EventFd,
}

impl<D: PassthroughDevice + 'static> UmlBackend<D> {
    pub(super) fn new(shared: Arc<Shared<D>>) -> io::Result<Self> {
        Ok(Self {
            shared,
            epoll: OnceLock::new(),
            pending: OnceLock::new(),
            resume: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK)?,
        })
    }

    /// The worker's epoll, once the daemon made it (weak: it holds this back-end).
    pub(super) fn set_epoll(&self, epoll: &Arc<VringEpollHandler<Arc<UmlBackend<D>>>>) {
        let _ = self.epoll.set(Arc::downgrade(epoll));
        if let Err(e) =
            epoll.register_listener(self.resume.as_raw_fd(), EventSet::IN, u64::from(RESUME))
        {
            self.shared.error(format!(
                "watching the worker's resume event: {e}; commands left by a full round wait for UML's next kick"
            ));
        }
        if self.shared.worker.poll.is_zero() {
            return;
        }
        match PendingEvents::new(epoll.as_raw_fd()) {
            Ok(pending) => {
                let _ = self.pending.set(pending);
            }
            Err(e) => self.shared.error(format!(
                "watching the worker's events for polling: {e}; the worker does not poll"
            )),
        }
    }

    fn watcher(&self) -> Option<Arc<VringEpollHandler<Arc<UmlBackend<D>>>>> {
        self.epoll.get().and_then(Weak::upgrade)
    }

    /// The worker's events as a polling worker looks at them (with a poll window).
    pub(super) fn pending_events(&self) -> Option<&PendingEvents> {
        self.pending.get()
    }

    pub(super) fn shared(&self) -> &Shared<D> {
        &self.shared
    }

    /// The guest's memory as it is now, once a memory table was accepted.
    pub(super) fn snapshot(&self) -> Option<Snapshot> {
        let served = self.shared.served();
        let memory = served.memory.as_ref()?;
        Some(Snapshot {
            mem: memory.memory().into_inner(),
            generation: served.generation,
        })
    }

    /// Whether `snapshot` is still the guest's memory.
    pub(super) fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.shared.served().generation == snapshot.generation
    }

    /// The command queue's ring in `snapshot`; `None` if the queue is not running.
    pub(super) fn look<'m>(&self, cmd: &VringMutex, snapshot: &'m Snapshot) -> Option<Look<'m>> {
        let state = cmd.get_ref();
        let queue = state.get_queue();
        if !state.is_enabled() || !queue.ready() {
            return None;
        }
        Some(Look {
            ring: Ring::new(queue, &snapshot.mem).ok()?,
            taken: queue.next_avail(),
            snapshot,
        })
    }

    /// The guest went away (`keep_memory` false) or reset the device: quiesce, unmap
    /// and rebuild (see [`Served::reset`]).
    pub(super) fn guest_left(&self, keep_memory: bool) {
        let watcher = self.watcher();
        let errors = self.shared.served().reset(
            &self.shared.mapper,
            watcher.as_deref().map(|w| w as &dyn Watcher),
            &self.shared.counters,
            keep_memory,
        );
        for e in errors {
            self.shared.error(e);
        }
    }

    /// Serve a round of the commands UML posted (see [`commands`](super::commands)); if more wait,
    /// the resume event brings the worker back for them. `window`: found by a polling
    /// window, which lends its look at the ring (used if still current), not by UML's
    /// kick. Returns how many commands the queue has had taken in all (its next avail
    /// index), or `None` while it is not being served. The command queue is never
    /// signalled (see the [module](super) documentation).
    pub(super) fn serve_commands(
        &self,
        cmd: &VringMutex,
        irq: &VringMutex,
        window: Option<&Look<'_>>,
    ) -> Option<u16> {
        let polled = window.is_some();
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let timed = !polled || {
            served.polled_batches = served.polled_batches.wrapping_add(1);
            served.polled_batches.is_multiple_of(TIMED_EVERY)
        };
        let started = timed.then(Instant::now);
        let generation = served.generation;
        let (Some(function), Some(memory)) = (served.function.as_mut(), served.memory.as_ref())
        else {
            return None;
        };
        let window = window.filter(|look| look.snapshot.generation == generation);
        let loaded;
        let mem: &GuestMemoryMmap = match window {
            Some(look) => &look.snapshot.mem,
            None => {
                loaded = memory.memory();
                &loaded
            }
        };
        let report = |e: UmlError| self.shared.error(e);
        let options = RoundOptions {
            ring: window.map(|look| &look.ring),
            timed,
            polled: polled.then_some(&self.shared.counters.polled_commands),
            report: Some(&report),
        };
        let round = {
            let mut vring = cmd.get_mut();
            served
                .commands
                .serve_round(function, vring.get_queue_mut(), mem, options)
        };
        let round = match round {
            Ok(round) => round,
            Err(UmlError::QueueNotReady) => return None,
            Err(e) => {
                self.shared.error(e);
                return None;
            }
        };
        if round.left {
            if let Err(e) = self.resume.write(1) {
                self.shared.error(format!(
                    "signalling the worker to serve the commands left: {e}"
                ));
            }
        }
        if round.commands > 0 {
            let c = &self.shared.counters;
            Counters::add(&c.config_accesses, round.config);
            Counters::add(&c.mmio_reads, round.reads);
            Counters::add(&c.mmio_writes, round.writes);
            Counters::add(&c.command_batches, 1);
            tracing::debug!(
                config = round.config,
                reads = round.reads,
                writes = round.writes,
                refused = round.refused,
                "command batch"
            );
        }
        for e in function.take_errors() {
            self.shared.error(e);
        }

        // Any config or MSI-X table write may have reprogrammed the vectors.
        let routing_changed = !function.take_msi_routing().is_empty();
        if served.interrupts.stale(function, routing_changed) {
            if let Some(watcher) = self.watcher() {
                if let Err(e) = served.interrupts.sync(function, routing_changed, &*watcher) {
                    self.shared
                        .error(format!("watching the guest's vectors: {e}"));
                }
            }
        }
        if routing_changed {
            // Vectors the guest unmasked with an interrupt pending, and any that fired.
            for message in function.take_messages() {
                served.interrupts.push(message);
            }
        }
        deliver(served, irq, mem, &self.shared);
        if let Some(started) = started.filter(|_| round.commands > 0) {
            let c = &self.shared.counters;
            Counters::add_elapsed(&c.command_ns, started);
            Counters::add(
                &c.bar_access_ns,
                u64::try_from(round.bar_access.as_nanos()).unwrap_or(u64::MAX),
            );
            Counters::add(&c.timed_batches, 1);
        }
        Some(round.taken)
    }

    /// Deliver what is waiting for UML's interrupt buffers, after taking the messages
    /// of every vector that fired if `fired` (for a worker that reads the vectors'
    /// eventfds itself instead of being called for each).
    pub(super) fn poll_interrupts(&self, irq: &VringMutex, fired: bool) {
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let (Some(function), Some(memory)) = (served.function.as_mut(), served.memory.as_ref())
        else {
            return;
        };
        if fired {
            for message in function.take_messages() {
                served.interrupts.push(message);
            }
            for e in function.take_errors() {
                self.shared.error(e);
            }
        }
        if served.interrupts.waiting() {
            let mem = memory.memory();
            deliver(served, irq, &mem, &self.shared);
        }
    }

    fn vector_fired(&self, id: u64, irq: &VringMutex) {
        let started = Instant::now();
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let (Some(function), Some(memory)) = (served.function.as_mut(), served.memory.as_ref())
        else {
            return;
        };
        let Some((kind, vector)) = served.interrupts.vector(id) else {
            return;
        };
        if let Some(message) = function.vector_fired(kind, vector) {
            served.interrupts.push(message);
        }
        let mem = memory.memory();
        deliver(served, irq, &mem, &self.shared);
        Counters::add_elapsed(&self.shared.counters.interrupt_ns, started);
    }

    fn buffers_posted(&self, irq: &VringMutex) {
        Counters::add(&self.shared.counters.irq_buffer_kicks, 1);
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let Some(memory) = served.memory.as_ref() else {
            return;
        };
        let mem = memory.memory();
        deliver(served, irq, &mem, &self.shared);
    }
}

fn deliver<D: PassthroughDevice>(
    served: &mut Served<D>,
    irq: &VringMutex,
    mem: &GuestMemoryMmap,
    shared: &Shared<D>,
) {
    match served.interrupts.deliver(irq, mem) {
        Ok(n) => Counters::add(&shared.counters.interrupts, n),
        Err(e) => shared.error(format!("delivering interrupts: {e}")),
    }
}

impl<D: PassthroughDevice + 'static> VhostUserBackend for UmlBackend<D> {
    type Bitmap = ();
    type Vring = VringMutex;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn reset_device(&self) {
        tracing::info!(socket = %self.shared.socket.display(), "UML reset the device");
        self.guest_left(true);
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        let memory = mem.memory();
        let mut served = self.shared.served();
        let result = served.dma.map(&self.shared.mapper, &memory);
        self.shared
            .counters
            .dma_mapped_bytes
            .store(served.dma.mapped_bytes(), Relaxed);
        // Queues are served only from memory that was accepted.
        served.memory = result.is_ok().then(|| mem.clone());
        served.generation += 1;
        match result {
            Ok(bytes) => {
                tracing::info!(
                    socket = %self.shared.socket.display(),
                    bytes,
                    "UML memory mapped for the device's DMA (IOVA = UML physical address)"
                );
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "{} ({}): {e}",
                    self.shared.socket.display(),
                    self.shared.device
                );
                self.shared.counters.error(message.clone());
                Err(io::Error::other(message))
            }
        }
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                self.shared
                    .error(format!("creating the vring worker's exit event: {e}"));
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringMutex],
        _thread_id: usize,
    ) -> io::Result<()> {
        super::realtime::raise_once(&self.shared.socket);
        super::affinity::pin_once(self.shared.worker.cpu, &self.shared.socket, |e| {
            self.shared.error(e)
        });
        let (Some(cmd), Some(irq)) = (
            vrings.get(usize::from(CMD_QUEUE)),
            vrings.get(usize::from(IRQ_QUEUE)),
        ) else {
            return Ok(());
        };
        let window = self.shared.worker.poll;
        match device_event {
            CMD_QUEUE | RESUME => {
                if device_event == RESUME {
                    // Level-triggered: taken before serving, so a round that leaves
                    // commands again is seen again.
                    let _ = self.resume.read();
                }
                self.serve_commands(cmd, irq, None);
                if !window.is_zero() {
                    super::polling::poll_commands(self, cmd, irq, window);
                }
            }
            IRQ_QUEUE => self.buffers_posted(irq),
            id => self.vector_fired(u64::from(id), irq),
        }
        // Errors are the guest's or the device's and are recorded; an Err here would
        // end the vring worker for good.
        Ok(())
    }
}
