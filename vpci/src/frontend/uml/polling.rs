//! Adaptive polling of the command queue, for a worker on a CPU of its own.
//!
//! UML busy-waits for the answer to every read it forwards. A worker woken by UML's
//! kick costs each read two process switches (UML writes the kick eventfd, the worker
//! wakes from epoll, answers and sleeps again): most of a served read when the device
//! access itself is one pread. With a poll window the worker keeps looking at the
//! avail ring after a batch, until a window has passed since the last command it
//! found, with UML's kicks on the command queue suppressed (`VRING_USED_F_NO_NOTIFY`;
//! those on the irq queue are off anyway while no interrupt message waits, see
//! [`interrupts`](super::interrupts)): a command that comes within the window is
//! answered with no kick and no wake-up, as the vhost-user back-ends of SPDK and DPDK
//! do.
//!
//! While polling, the worker looks at the rest of its epoll set every
//! [`EVENT_CHECK`]: vectors that fired are read and delivered from here, and
//! interrupt messages waiting for a buffer go out as soon as UML posts one. Anything
//! else pending — the exit event (the guest went, the frontend stops), a vring being
//! enabled, a kick UML sent before it saw kicks suppressed — ends the window, and the
//! event loop handles it.
//!
//! Kicks are turned back on before the worker returns to epoll, and the ring looked at
//! once more, so a command UML posted while it still saw kicks suppressed is served
//! rather than left waiting for a kick that never comes.
//!
//! A window works on a snapshot of UML's memory and its view of the command ring
//! ([`ring`](super::ring)), taken once and lent to every batch it serves, so a look is
//! one load and a batch resolves nothing it already knows. A new memory table from
//! UML is noticed at the next event check, and the worker polls on in the new memory.
//!
//! The worker polls at normal priority, back at real-time priority (if it has it) when
//! it sleeps again (see [`realtime`](super::realtime)): the kernel throttles a
//! real-time thread that runs without pause (50 ms of every second by default), which
//! would stall UML's reads past their 40 ms limit, and on a CPU shared with UML a
//! real-time spinner would shut UML out. On a CPU the guest needs, polling only delays
//! the guest it waits for; it is off by default.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::vhost_user::{Snapshot, UmlBackend};
use crate::passthrough::PassthroughDevice;

/// How often a polling worker looks at its other events between looks at the ring.
const EVENT_CHECK: Duration = Duration::from_micros(10);
/// Looks at the avail index per clock read and spin-loop hint. A look is one load; a
/// clock read costs about 120 ns under emulation (TCG, as in the test rig), and a
/// `pause` about 155 ns there (it leaves the CPU's translated code).
const LOOKS_PER_CLOCK: u32 = 16;

/// The worker's epoll set, watched from a second epoll: one look is one `epoll_wait`
/// that returns at once and consumes nothing.
pub(super) struct PendingEvents {
    epoll: Epoll,
}

impl PendingEvents {
    /// Watch the worker's epoll fd.
    pub(super) fn new(worker_epoll: RawFd) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            worker_epoll,
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(Self { epoll })
    }

    /// Whether any of the worker's events is pending. A failed look counts as one, so
    /// the worker goes back to its event loop rather than poll blind.
    fn any(&self) -> bool {
        let mut events = [EpollEvent::default()];
        !matches!(self.epoll.wait(0, &mut events), Ok(0))
    }
}

/// Why a window ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// No command for a whole window.
    Idle,
    /// UML replaced its memory table: poll on in the new memory.
    Stale,
    /// An event the event loop must handle, or the queue stopped.
    Leave,
}

/// Poll the command queue of `backend` after a batch, for up to `window` after each
/// command found.
pub(super) fn poll_commands<D: PassthroughDevice + 'static>(
    backend: &UmlBackend<D>,
    cmd: &VringMutex,
    irq: &VringMutex,
    window: Duration,
) {
    let Some(events) = backend.pending_events() else {
        return;
    };
    let poll = Poll { backend, cmd, irq };
    let counters = &backend.shared().counters;
    counters.polling.store(true, Ordering::Relaxed);
    super::realtime::at_normal_priority(|| poll.run(events, window));
    counters.polling.store(false, Ordering::Relaxed);
}

struct Poll<'a, D: PassthroughDevice + 'static> {
    backend: &'a UmlBackend<D>,
    cmd: &'a VringMutex,
    irq: &'a VringMutex,
}

impl<D: PassthroughDevice + 'static> Poll<'_, D> {
    fn run(&self, events: &PendingEvents, window: Duration) {
        loop {
            let Some(snapshot) = self.backend.snapshot() else {
                // The guest's memory is gone; kicks back on for whoever comes next.
                self.set_kicks(true);
                return;
            };
            self.set_kicks(false);
            let end = self.window(&snapshot, events, window);
            if end == End::Stale {
                // Kicks stay off: the next window looks at the new memory.
                continue;
            }
            // Kicks back on, then one more look: UML may have posted a command after
            // the last look while it still saw kicks suppressed.
            if !self.set_kicks(true) {
                return;
            }
            self.backend.serve_commands(self.cmd, self.irq, None);
            if end == End::Leave {
                return;
            }
        }
    }

    /// Poll until a whole `window` passes without a command, something else needs the
    /// event loop, or UML's memory changed.
    fn window(&self, snapshot: &Snapshot, events: &PendingEvents, window: Duration) -> End {
        let Some(mut look) = self.backend.look(self.cmd, snapshot) else {
            return End::Leave;
        };
        let mut deadline = Instant::now() + window;
        let mut next_check = Instant::now() + EVENT_CHECK;
        let mut looks = 0u32;
        let mut found = false;
        loop {
            if look.ring.avail_idx() != look.taken {
                let Some(taken) = self.backend.serve_commands(self.cmd, self.irq, Some(&look))
                else {
                    return End::Leave;
                };
                look.taken = taken;
                found = true;
            }
            looks = looks.wrapping_add(1);
            if !looks.is_multiple_of(LOOKS_PER_CLOCK) {
                continue;
            }
            std::hint::spin_loop();
            let now = Instant::now();
            if found {
                deadline = now + window;
                found = false;
            }
            if now >= next_check {
                let fired = events.any();
                self.backend.poll_interrupts(self.irq, fired);
                if fired && events.any() {
                    return End::Leave;
                }
                // The memory may have been replaced, the queue stopped or set up anew.
                if !self.backend.is_current(snapshot) {
                    return End::Stale;
                }
                match self.backend.look(self.cmd, snapshot) {
                    Some(again) => look = again,
                    None => return End::Leave,
                }
                next_check = now + EVENT_CHECK;
            }
            if now >= deadline {
                return End::Idle;
            }
        }
    }

    /// UML's kicks on the command queue on or off. Turning them on returns whether
    /// commands were posted meanwhile.
    fn set_kicks(&self, on: bool) -> bool {
        let mut state = self.cmd.get_mut();
        // A queue being torn down: its ring addresses may no longer be the guest's.
        if !state.is_enabled() || !state.get_queue().ready() {
            return false;
        }
        let result = if on {
            state.enable_notification()
        } else {
            state.disable_notification().map(|()| false)
        };
        result.unwrap_or_else(|e| {
            self.backend.shared().error(format!(
                "turning UML's kicks {}: {e}",
                if on { "on" } else { "off" }
            ));
            false
        })
    }
}
