//! Interrupts for a UML guest: the function's live MSI/MSI-X vectors are watched on
//! the vring worker's epoll, and the messages they produce are written into the
//! buffers UML posts on the irq queue.
//!
//! UML posts ten buffers and recycles each one after handling it. A message that finds
//! no buffer waits here (identical waiting messages are one: an MSI is an edge, and the
//! driver's handler looks at all the device's work) and goes out when UML posts again.
//! UML's kick for a recycled buffer is wanted only then: while no message waits, the
//! irq queue asks UML not to kick (VRING_USED_F_NO_NOTIFY), which spares a wake-up of
//! the worker for every interrupt.
//!
//! The worker calls [`Interrupts::update`] with what brought it there (a round of
//! commands, a vector, a look while polling, UML's buffers) and nothing else; a guest
//! that leaves has its vectors unwatched and its messages forgotten with
//! [`Interrupts::clear`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::chain::{self, Writable};
use super::error::UmlError;
use super::ring;
use crate::frontend::virtio_pcidev::{IrqMessage, HEADER_LEN};
use crate::passthrough::{LiveIrqs, PassthroughDevice, PassthroughFunction};
use crate::{InterruptKind, MsiMessage, PciFunction};

/// Epoll ids below this belong to the vrings, the worker's exit event (2 queues) and
/// the command queue's resume event (see [`vhost_user`](super::vhost_user)).
pub(super) const FIRST_LISTENER: u64 = 4;
/// Most messages kept while UML has no buffer posted.
const MAX_WAITING: usize = 256;

/// Adds and removes fds on the epoll loop that calls the backend back with their id.
pub(super) trait Watcher {
    fn watch(&self, fd: RawFd, id: u64) -> io::Result<()>;
    fn unwatch(&self, fd: RawFd, id: u64) -> io::Result<()>;
}

/// What brought the worker to the guest's interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InterruptEvent {
    /// A round of commands was served: any config or MSI-X table write may have
    /// reprogrammed the vectors.
    Commands,
    /// The vector watched with this epoll id fired.
    Vector(u64),
    /// A polling worker looked at its events; `fired` if some were pending (vectors
    /// it did not wait for among them, perhaps).
    Polled { fired: bool },
    /// UML posted interrupt buffers.
    Buffers,
}

/// The worker's epoll, if it is still there, to watch vectors on.
pub(super) type WatcherSource<'a> = &'a dyn Fn() -> Option<Arc<dyn Watcher>>;

#[derive(Clone, Copy, Debug)]
struct Watched {
    kind: InterruptKind,
    vector: u16,
    fd: RawFd,
}

/// The vectors watched and the messages waiting for a buffer.
#[derive(Debug, Default)]
pub(super) struct Interrupts {
    /// Entry `i` is watched with id `FIRST_LISTENER + i`.
    watched: Vec<Watched>,
    live: Option<LiveIrqs>,
    waiting: VecDeque<MsiMessage>,
    /// Messages dropped because too many were waiting.
    pub(super) dropped: u64,
    /// UML was asked not to kick the irq queue (it may still kick: the flag is a hint
    /// and a new queue starts without it).
    kicks_off: bool,
    writable: Writable,
    scratch: Vec<u8>,
}

impl Interrupts {
    /// Bring the guest's interrupts up to date after `event`: the function's live
    /// vectors watched, the messages of vectors that fired queued, and what waits
    /// written into the buffers UML posted on `irq`. Returns how many messages were
    /// delivered; errors go to `report`.
    pub(super) fn update<D: PassthroughDevice + 'static>(
        &mut self,
        event: InterruptEvent,
        function: &mut PassthroughFunction<D>,
        watcher: WatcherSource<'_>,
        irq: &VringMutex,
        mem: &GuestMemoryMmap,
        report: &dyn Fn(UmlError),
    ) -> u64 {
        match event {
            InterruptEvent::Commands => {
                let routing_changed = !function.take_msi_routing().is_empty();
                if self.stale(function, routing_changed) {
                    if let Some(watcher) = watcher() {
                        if let Err(e) = self.sync(function, routing_changed, &*watcher) {
                            report(UmlError::WatchVectors(e));
                        }
                    }
                }
                if routing_changed {
                    // Vectors the guest unmasked with an interrupt pending, and any
                    // that fired.
                    self.take_messages(function);
                }
            }
            InterruptEvent::Vector(id) => {
                let Some((kind, vector)) = self.vector(id) else {
                    return 0;
                };
                if let Some(message) = function.vector_fired(kind, vector) {
                    self.push(message);
                }
            }
            InterruptEvent::Polled { fired } => {
                if fired {
                    self.take_messages(function);
                }
                if self.waiting.is_empty() {
                    return 0;
                }
            }
            InterruptEvent::Buffers => {}
        }
        self.deliver(irq, mem).unwrap_or_else(|e| {
            report(UmlError::DeliverInterrupts(e));
            0
        })
    }

    /// Queue the messages of every vector that fired (read from their eventfds).
    fn take_messages<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
    ) {
        for message in function.take_messages() {
            self.push(message);
        }
    }

    /// Whether [`sync`](Self::sync) has anything to do.
    fn stale<D: PassthroughDevice>(
        &self,
        function: &PassthroughFunction<D>,
        routing_changed: bool,
    ) -> bool {
        routing_changed || function.live_irqs() != self.live
    }

    /// Watch exactly the function's live vectors. Cheap when nothing changed; called
    /// after every batch of commands, since any config or MSI-X table write may have
    /// reprogrammed them.
    fn sync<D: PassthroughDevice>(
        &mut self,
        function: &PassthroughFunction<D>,
        routing_changed: bool,
        watcher: &dyn Watcher,
    ) -> io::Result<()> {
        if !self.stale(function, routing_changed) {
            return Ok(());
        }
        let live = function.live_irqs();
        let vectors = function.vectors();
        let same = vectors.len() == self.watched.len()
            && vectors.iter().zip(&self.watched).all(|(v, w)| {
                (v.routing.kind, v.routing.vector, v.eventfd.as_raw_fd())
                    == (w.kind, w.vector, w.fd)
            });
        self.live = live;
        if same {
            return Ok(());
        }
        self.unwatch_all(watcher);
        for v in vectors {
            let id = FIRST_LISTENER + self.watched.len() as u64;
            let fd = v.eventfd.as_raw_fd();
            watcher.watch(fd, id)?;
            self.watched.push(Watched {
                kind: v.routing.kind,
                vector: v.routing.vector,
                fd,
            });
        }
        tracing::debug!(vectors = self.watched.len(), live = ?self.live, "watching the guest's vectors");
        Ok(())
    }

    /// Stop watching every vector.
    fn unwatch_all(&mut self, watcher: &dyn Watcher) {
        for (i, w) in self.watched.drain(..).enumerate() {
            // The fd may already be closed (the function was rebuilt): epoll dropped it.
            let _ = watcher.unwatch(w.fd, FIRST_LISTENER + i as u64);
        }
        self.live = None;
    }

    /// Forget everything of the guest that left.
    pub(super) fn clear(&mut self, watcher: &dyn Watcher) {
        self.unwatch_all(watcher);
        self.waiting.clear();
        self.kicks_off = false;
    }

    /// The vector watched with epoll id `id`.
    fn vector(&self, id: u64) -> Option<(InterruptKind, u16)> {
        let i = usize::try_from(id.checked_sub(FIRST_LISTENER)?).ok()?;
        self.watched.get(i).map(|w| (w.kind, w.vector))
    }

    /// Queue `message` for UML.
    fn push(&mut self, message: MsiMessage) {
        if self.waiting.contains(&message) {
            return;
        }
        if self.waiting.len() == MAX_WAITING {
            self.dropped += 1;
            tracing::warn!(
                data = message.data,
                "UML has posted no interrupt buffer for {MAX_WAITING} messages; dropping one"
            );
            return;
        }
        self.waiting.push_back(message);
    }

    /// Write waiting messages into the buffers UML posted on `vring` and signal it;
    /// returns how many were delivered. UML is asked to kick when it posts a buffer
    /// only while a message waits for one.
    fn deliver(&mut self, vring: &VringMutex, mem: &GuestMemoryMmap) -> io::Result<u64> {
        if self.waiting.is_empty() && self.kicks_off {
            return Ok(0);
        }
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return Ok(0);
        }
        fn queue_error(e: impl std::fmt::Display) -> io::Error {
            io::Error::other(format!("irq queue: {e}"))
        }
        // Used entries over the avail ring would post buffers without end.
        ring::check_layout(state.get_queue(), mem).map_err(queue_error)?;
        let mut delivered = 0;
        let mut used = false;
        let mut looked_again = false;
        while let Some(message) = self.waiting.front().copied() {
            let Some(head) = state.get_queue_mut().pop_descriptor_chain(mem) else {
                // Out of buffers: ask for UML's kick, then look once more, since UML may
                // have posted one before it could see the request.
                self.kicks_off = false;
                let posted = state
                    .get_queue_mut()
                    .enable_notification(mem)
                    .map_err(queue_error)?;
                if posted && !looked_again {
                    looked_again = true;
                    continue;
                }
                break;
            };
            let (index, split) = chain::split(head, mem, &mut self.scratch, &mut self.writable);
            let bytes = IrqMessage::Msi {
                address: message.address,
                data: message.data,
            }
            .encode();
            let written = match split {
                Ok(()) => self.writable.write(mem, &bytes).unwrap_or(0),
                Err(_) => 0,
            };
            state.add_used(index, written as u32).map_err(queue_error)?;
            used = true;
            if written >= HEADER_LEN + 4 {
                self.waiting.pop_front();
                delivered += 1;
            } else {
                tracing::warn!(
                    writable = self.writable.len(),
                    "UML posted an interrupt buffer too small for a message; skipped it"
                );
            }
        }
        if self.waiting.is_empty() && !self.kicks_off {
            state
                .get_queue_mut()
                .disable_notification(mem)
                .map_err(queue_error)?;
            self.kicks_off = true;
        }
        if used && state.needs_notification().map_err(queue_error)? {
            state.signal_used_queue()?;
        }
        Ok(delivered)
    }
}
