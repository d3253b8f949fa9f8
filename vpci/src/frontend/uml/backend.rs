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
use udriver::vfio::IrqIndex;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::chain::{self, Writable};
use super::dma::GuestDma;
use super::interrupts::{Interrupts, Watcher};
use super::polling::PendingEvents;
use super::ring::Ring;
use super::status::Counters;
use super::WorkerOptions;
use crate::config::regs::{command, header};
use crate::frontend::virtio_pcidev::{self, Command};
use crate::passthrough::{PassthroughDevice, PassthroughFunction};
use crate::AccessWidth;
use crate::PciFunction;

/// The guest memory vhost-user-backend keeps for the vrings.
pub(super) type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Queue 0: commands from UML. Queue 1: interrupt buffers UML posts.
const CMD_QUEUE: u16 = 0;
const IRQ_QUEUE: u16 = 1;
const QUEUES: usize = 2;
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
    readable: Vec<u8>,
    writable: Writable,
    reply: Vec<u8>,
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
            readable: Vec::new(),
            writable: Writable::default(),
            reply: Vec::new(),
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

/// What one batch of commands did.
#[derive(Default)]
struct Batch {
    commands: u64,
    config: u64,
    reads: u64,
    writes: u64,
    refused: u64,
    /// Whether the batch is timed (see [`TIMED_EVERY`]).
    timed: bool,
    /// Time in the device's BAR accesses.
    bar_access: Duration,
}

/// One guest connection's back-end.
pub(super) struct UmlBackend<D: PassthroughDevice + 'static> {
    shared: Arc<Shared<D>>,
    epoll: OnceLock<Weak<VringEpollHandler<Arc<UmlBackend<D>>>>>,
    /// The worker's epoll set as a polling worker looks at it.
    pending: OnceLock<PendingEvents>,
}

impl<D: PassthroughDevice + 'static> UmlBackend<D> {
    pub(super) fn new(shared: Arc<Shared<D>>) -> Self {
        Self {
            shared,
            epoll: OnceLock::new(),
            pending: OnceLock::new(),
        }
    }

    /// The worker's epoll, once the daemon made it (weak: it holds this back-end).
    pub(super) fn set_epoll(&self, epoll: &Arc<VringEpollHandler<Arc<UmlBackend<D>>>>) {
        let _ = self.epoll.set(Arc::downgrade(epoll));
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

    /// Serve every command UML posted. `window`: found by a polling window, which
    /// lends its look at the ring (used if still current), not by UML's kick.
    /// Returns how many commands the queue has had taken in all (its next avail
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
        let mut batch = Batch {
            timed,
            ..Batch::default()
        };
        let taken = {
            let mut vring = cmd.get_mut();
            let queue = vring.get_queue_mut();
            if !queue.ready() {
                return None;
            }
            let built;
            let ring = match window.filter(|look| look.ring.is_of(queue)) {
                Some(look) => &look.ring,
                None => match Ring::new(queue, mem) {
                    Ok(ring) => {
                        built = ring;
                        &built
                    }
                    Err(e) => {
                        self.shared.error(format!("command queue: {e}"));
                        return None;
                    }
                },
            };
            let (mut taken, mut used) = (queue.next_avail(), queue.next_used());
            'ring: loop {
                let waiting = match ring.waiting(taken) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        self.shared.error(format!("command queue: {e}"));
                        break;
                    }
                };
                for _ in 0..waiting {
                    let head = ring.head(taken);
                    taken = taken.wrapping_add(1);
                    batch.commands += 1;
                    let command = chain::gather(
                        ring.chain(head),
                        mem,
                        &mut served.readable,
                        &mut served.writable,
                    )
                    .map_err(|e| format!("refused a command chain: {e}"))
                    .and_then(|()| {
                        virtio_pcidev::parse(&served.readable)
                            .map_err(|e| format!("refused a command: {e}"))
                    });
                    let written = match command {
                        Ok(command) => execute(
                            function,
                            command,
                            &served.writable,
                            mem,
                            &mut served.reply,
                            &mut batch,
                            &self.shared,
                        ),
                        Err(why) => {
                            batch.refused += 1;
                            self.shared.error(why);
                            served.writable.fill(mem, 0xff, &mut served.reply)
                        }
                    };
                    if polled {
                        // Before the answer, so whoever sees the answer sees the count.
                        self.shared.counters.polled_commands.fetch_add(1, Relaxed);
                    }
                    if let Err(e) = ring.put_used(used, head, written as u32) {
                        self.shared.error(format!("command queue: {e}"));
                        break 'ring;
                    }
                    used = used.wrapping_add(1);
                }
            }
            queue.set_next_avail(taken);
            queue.set_next_used(used);
            taken
        };
        if batch.commands > 0 {
            let c = &self.shared.counters;
            Counters::add(&c.config_accesses, batch.config);
            Counters::add(&c.mmio_reads, batch.reads);
            Counters::add(&c.mmio_writes, batch.writes);
            Counters::add(&c.command_batches, 1);
            tracing::debug!(
                config = batch.config,
                reads = batch.reads,
                writes = batch.writes,
                refused = batch.refused,
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
        if let Some(started) = started.filter(|_| batch.commands > 0) {
            let c = &self.shared.counters;
            Counters::add_elapsed(&c.command_ns, started);
            Counters::add(
                &c.bar_access_ns,
                u64::try_from(batch.bar_access.as_nanos()).unwrap_or(u64::MAX),
            );
            Counters::add(&c.timed_batches, 1);
        }
        Some(taken)
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

/// Serve `command`; returns the bytes written into the chain's writable part.
fn execute<D: PassthroughDevice + 'static>(
    function: &mut PassthroughFunction<D>,
    command: Command<'_>,
    writable: &Writable,
    mem: &GuestMemoryMmap,
    reply: &mut Vec<u8>,
    batch: &mut Batch,
    shared: &Shared<D>,
) -> usize {
    let want = command.reply_len();
    if want > writable.len() {
        batch.refused += 1;
        shared.error(format!(
            "{command}: the chain has {} writable bytes for a {want}-byte answer",
            writable.len()
        ));
        return writable.fill(mem, 0xff, reply);
    }
    match command {
        Command::ConfigRead { offset, size } => {
            batch.config += 1;
            let value = config_read(function, offset, size.bytes());
            write_reply(writable, mem, &value.to_le_bytes()[..size.bytes()], shared)
        }
        Command::ConfigWrite {
            offset,
            size,
            value,
        } => {
            batch.config += 1;
            config_write(function, offset, size.bytes(), value);
            0
        }
        Command::MmioRead { bar, offset, len } => {
            batch.reads += 1;
            reply.clear();
            reply.resize(len as usize, 0);
            let started = batch.timed.then(Instant::now);
            let result = function.bar_read(bar, offset, reply);
            batch.bar_access += started.map_or(Duration::ZERO, |s| s.elapsed());
            if let Err(e) = result {
                shared.error(format!("{command}: {e}"));
                reply.fill(0xff);
            }
            write_reply(writable, mem, reply, shared)
        }
        Command::MmioWrite { bar, offset, data } => {
            batch.writes += 1;
            let started = batch.timed.then(Instant::now);
            let result = function.bar_write(bar, offset, data);
            batch.bar_access += started.map_or(Duration::ZERO, |s| s.elapsed());
            if let Err(e) = result {
                shared.error(format!("{command}: {e}"));
            }
            0
        }
        Command::MmioMemset {
            bar,
            offset,
            len,
            value,
        } => {
            batch.writes += 1;
            let size = function.bar_layout().get(bar).map_or(0, |d| d.size);
            if u64::from(len) > size {
                shared.error(format!("{command}: longer than the {size:#x}-byte BAR"));
                return 0;
            }
            reply.clear();
            reply.resize(len as usize, value);
            if let Err(e) = function.bar_write(bar, offset, reply) {
                shared.error(format!("{command}: {e}"));
            }
            0
        }
    }
}

fn write_reply<D: PassthroughDevice>(
    writable: &Writable,
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    shared: &Shared<D>,
) -> usize {
    writable.write(mem, bytes).unwrap_or_else(|e| {
        shared.error(format!("answering a read: {e}"));
        0
    })
}

/// A config read of 1, 2, 4 or 8 bytes (8 as two dwords, as a PCI host bridge does).
fn config_read<F: PciFunction>(function: &mut F, offset: u16, len: usize) -> u64 {
    match AccessWidth::from_len(len) {
        Some(width) => function.config_read(offset, width).into(),
        None => {
            let low = function.config_read(offset, AccessWidth::Dword);
            let high = function.config_read(offset + 4, AccessWidth::Dword);
            u64::from(low) | u64::from(high) << 32
        }
    }
}

fn config_write<F: PciFunction>(function: &mut F, offset: u16, len: usize, value: u64) {
    match AccessWidth::from_len(len) {
        Some(width) => function.config_write(offset, width, value as u32),
        None => {
            function.config_write(offset, AccessWidth::Dword, value as u32);
            function.config_write(offset + 4, AccessWidth::Dword, (value >> 32) as u32);
        }
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
            CMD_QUEUE => {
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
