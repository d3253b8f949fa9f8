//! What a frontend has done: one [`FrontendStatus`], the same for every frontend and
//! the same in the control protocol's replies (`udrv status --json`), and the
//! [`FrontendCounters`] a frontend keeps lock-free on its hot path to make it from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A snapshot of a frontend serving one device.
///
/// The first fields are any frontend's; the worker's fields (from `command_batches` to
/// `polling`) are those of a frontend whose worker serves a command queue (UML), zero
/// for others. Decoding takes missing fields as zero, so a status from a build with
/// fewer fields still reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrontendStatus {
    /// The socket the VMM connects to.
    pub socket: PathBuf,
    /// A guest is connected now.
    pub guest_connected: bool,
    /// Guests that connected since the frontend started.
    pub guests_served: u64,
    /// Config reads and writes served.
    pub config_accesses: u64,
    /// BAR reads served.
    pub mmio_reads: u64,
    /// BAR writes and memsets served.
    pub mmio_writes: u64,
    /// MSI/MSI-X messages delivered to the guest.
    pub interrupts: u64,
    /// Guest memory mapped for the device's DMA now.
    pub dma_mapped_bytes: u64,
    /// The latest error met serving a guest (a refused message, a failed mapping, a
    /// device error), if any.
    pub last_error: Option<String>,
    /// Batches of commands served: one per wake-up of the worker that found commands
    /// (one kick may bring several).
    pub command_batches: u64,
    /// Times the worker woke because the guest posted interrupt buffers.
    pub irq_buffer_kicks: u64,
    /// Command batches timed: every batch a kick brought, and one in 16 of those a
    /// polling worker found (a clock read costs about 120 ns under emulation).
    pub timed_batches: u64,
    /// Time the worker spent serving the timed batches, in nanoseconds.
    pub command_ns: u64,
    /// Of that, time in the device's BAR reads and writes (where an emulated device's
    /// model runs), in nanoseconds.
    pub bar_access_ns: u64,
    /// Time the worker spent delivering fired vectors (from taking the eventfd's count
    /// to signalling the guest), in nanoseconds.
    pub interrupt_ns: u64,
    /// Commands the worker found by polling the queue, with no kick from the guest
    /// (see [`WorkerOptions::poll`](super::WorkerOptions::poll)).
    pub polled_commands: u64,
    /// The worker is polling the command queue now.
    pub polling: bool,
    /// A vfio-user frontend's own state: its client, DMA mappings, message counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vfio_user: Option<crate::frontend::vfio_user::VfioUserStatus>,
}

/// A frontend's counters, updated lock-free by its threads.
#[derive(Debug, Default)]
pub(crate) struct FrontendCounters {
    pub(crate) guest_connected: AtomicBool,
    pub(crate) guests_served: AtomicU64,
    pub(crate) config_accesses: AtomicU64,
    pub(crate) mmio_reads: AtomicU64,
    pub(crate) mmio_writes: AtomicU64,
    pub(crate) interrupts: AtomicU64,
    pub(crate) command_batches: AtomicU64,
    pub(crate) irq_buffer_kicks: AtomicU64,
    pub(crate) timed_batches: AtomicU64,
    pub(crate) command_ns: AtomicU64,
    pub(crate) bar_access_ns: AtomicU64,
    pub(crate) interrupt_ns: AtomicU64,
    pub(crate) polled_commands: AtomicU64,
    pub(crate) polling: AtomicBool,
    pub(crate) dma_mapped_bytes: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Errors logged in full before logging thins out.
const LOGGED_ERRORS: u64 = 20;

impl FrontendCounters {
    /// Add `n` to `counter` (nothing to write when it is zero).
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Add the time since `started` to `counter`, in nanoseconds.
    pub(crate) fn add_elapsed(counter: &AtomicU64, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Relaxed);
    }

    /// Log `error` and keep it as the latest. A guest can send bad input as fast as it
    /// likes, so after the first [`LOGGED_ERRORS`] only every 1000th is logged.
    pub(crate) fn error(&self, error: String) {
        let n = self.errors.fetch_add(1, Relaxed) + 1;
        if n <= LOGGED_ERRORS || n.is_multiple_of(1000) {
            tracing::warn!(errors = n, "{error}");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The counters as a status of the frontend on `socket`.
    pub(crate) fn snapshot(&self, socket: PathBuf) -> FrontendStatus {
        FrontendStatus {
            socket,
            guest_connected: self.guest_connected.load(Relaxed),
            guests_served: self.guests_served.load(Relaxed),
            config_accesses: self.config_accesses.load(Relaxed),
            mmio_reads: self.mmio_reads.load(Relaxed),
            mmio_writes: self.mmio_writes.load(Relaxed),
            interrupts: self.interrupts.load(Relaxed),
            command_batches: self.command_batches.load(Relaxed),
            irq_buffer_kicks: self.irq_buffer_kicks.load(Relaxed),
            timed_batches: self.timed_batches.load(Relaxed),
            command_ns: self.command_ns.load(Relaxed),
            bar_access_ns: self.bar_access_ns.load(Relaxed),
            interrupt_ns: self.interrupt_ns.load(Relaxed),
            polled_commands: self.polled_commands.load(Relaxed),
            polling: self.polling.load(Relaxed),
            dma_mapped_bytes: self.dma_mapped_bytes.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            vfio_user: None,
        }
    }
}
