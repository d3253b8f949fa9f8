//! The vhost-user back-end one UML guest talks to, and what its vring worker does.
//!
//! vhost-user-backend runs two threads for a guest: its request thread (memory tables,
//! resets: the [`VhostUserBackend`] calls at the end of this file) and its vring worker
//! (kicks, vector eventfds and the worker's own resume event: [`handle_event`]). The
//! worker's handlers come first:
//!
//! - a kick on the command queue, or the resume event: a round of commands
//!   ([`commands`](super::commands)), then the interrupts it may have changed, and, with
//!   a poll window, [`polling`](super::polling);
//! - a vector's eventfd, or UML posting interrupt buffers: the
//!   [`interrupts`](super::interrupts).
//!
//! Both threads go through [`Shared::served`]; the worker takes it once per round of
//! commands, and a polling worker holds no lock between looks at the queue. A guest's
//! state from connection to departure is the [`lifecycle`](super::lifecycle).
//!
//! [`handle_event`]: VhostUserBackend::handle_event

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::commands::RoundOptions;
use super::error::UmlError;
use super::interrupts::{InterruptEvent, Watcher};
use super::lifecycle::{Memory, ServedFunction, Shared};
use super::polling::PendingEvents;
use super::ring::Ring;
use crate::frontend::FrontendCounters;
use crate::passthrough::PassthroughDevice;

/// Queue 0: commands from UML. Queue 1: interrupt buffers UML posts.
const CMD_QUEUE: u16 = 0;
const IRQ_QUEUE: u16 = 1;
const QUEUES: usize = 2;
/// The worker's own event: a round left commands for another (epoll id; 2 is the
/// exit event).
const RESUME: u16 = 3;
/// UML's `MAX_SUPPORTED_QUEUE_SIZE`.
const MAX_QUEUE_SIZE: usize = 256;
/// `VIRTIO_F_VERSION_1`.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

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

/// One guest connection's back-end.
pub(super) struct UmlBackend<D: PassthroughDevice + 'static> {
    shared: Arc<Shared<D>>,
    epoll: OnceLock<Weak<VringEpollHandler<Arc<UmlBackend<D>>>>>,
    /// The worker's epoll set as a polling worker looks at it.
    pending: OnceLock<PendingEvents>,
    /// Signalled when a round left commands waiting; watched on the worker's epoll
    /// with id [`RESUME`].
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

    /// [`watcher`](Self::watcher) as the interrupts take it.
    fn vector_watcher(&self) -> Option<Arc<dyn Watcher>> {
        self.watcher().map(|w| w as Arc<dyn Watcher>)
    }

    /// Bring the interrupts up to date after `event` (see
    /// [`Interrupts::update`](super::interrupts::Interrupts::update)) and count what
    /// was delivered.
    fn update_interrupts(
        &self,
        served: &mut ServedFunction<D>,
        event: InterruptEvent,
        irq: &VringMutex,
        mem: &GuestMemoryMmap,
    ) {
        let Some(function) = served.function.as_mut() else {
            return;
        };
        let delivered =
            served
                .interrupts
                .update(event, function, &|| self.vector_watcher(), irq, mem, &|e| {
                    self.shared.error(e)
                });
        FrontendCounters::add(&self.shared.counters.interrupts, delivered);
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
    /// and rebuild (see [`ServedFunction::reset`]).
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
                self.shared.error(UmlError::Resume(e));
            }
        }
        if round.commands > 0 {
            let c = &self.shared.counters;
            FrontendCounters::add(&c.config_accesses, round.config);
            FrontendCounters::add(&c.mmio_reads, round.reads);
            FrontendCounters::add(&c.mmio_writes, round.writes);
            FrontendCounters::add(&c.command_batches, 1);
            tracing::debug!(
                config = round.config,
                reads = round.reads,
                writes = round.writes,
                refused = round.refused,
                "command batch"
            );
        }
        for e in function.take_errors() {
            self.shared.error(UmlError::Function(e));
        }

        self.update_interrupts(served, InterruptEvent::Commands, irq, mem);
        if let Some(started) = started.filter(|_| round.commands > 0) {
            let c = &self.shared.counters;
            FrontendCounters::add_elapsed(&c.command_ns, started);
            FrontendCounters::add(
                &c.bar_access_ns,
                u64::try_from(round.bar_access.as_nanos()).unwrap_or(u64::MAX),
            );
            FrontendCounters::add(&c.timed_batches, 1);
        }
        Some(round.taken)
    }

    /// Deliver what is waiting for UML's interrupt buffers, after taking the messages
    /// of every vector that fired if `fired` (for a worker that reads the vectors'
    /// eventfds itself instead of being called for each).
    pub(super) fn poll_interrupts(&self, irq: &VringMutex, fired: bool) {
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let Some(mem) = served.memory.as_ref().map(GuestAddressSpace::memory) else {
            return;
        };
        self.update_interrupts(served, InterruptEvent::Polled { fired }, irq, &mem);
        if fired {
            for e in served.function.iter_mut().flat_map(|f| f.take_errors()) {
                self.shared.error(UmlError::Function(e));
            }
        }
    }

    fn vector_fired(&self, id: u64, irq: &VringMutex) {
        let started = Instant::now();
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let Some(mem) = served.memory.as_ref().map(GuestAddressSpace::memory) else {
            return;
        };
        self.update_interrupts(served, InterruptEvent::Vector(id), irq, &mem);
        FrontendCounters::add_elapsed(&self.shared.counters.interrupt_ns, started);
    }

    fn buffers_posted(&self, irq: &VringMutex) {
        FrontendCounters::add(&self.shared.counters.irq_buffer_kicks, 1);
        let mut guard = self.shared.served();
        let served = &mut *guard;
        let Some(mem) = served.memory.as_ref().map(GuestAddressSpace::memory) else {
            return;
        };
        self.update_interrupts(served, InterruptEvent::Buffers, irq, &mem);
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
        let result =
            self.shared
                .served()
                .accept_memory(&self.shared.mapper, &self.shared.counters, &mem);
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
                self.shared.error(&e);
                Err(io::Error::other(e))
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
