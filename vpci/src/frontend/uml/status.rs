//! What a UML frontend has done: counters kept lock-free on the hot path, read as one
//! [`FrontendStatus`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;

/// A snapshot of a UML frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendStatus {
    /// The vhost-user socket UML connects to.
    pub socket: PathBuf,
    /// A UML guest is connected now.
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
    /// Commands the worker found by polling the queue, with no kick from UML (see
    /// [`WorkerOptions::poll`](super::WorkerOptions::poll)).
    pub polled_commands: u64,
    /// The worker is polling the command queue now.
    pub polling: bool,
    /// Guest memory mapped for the device's DMA now.
    pub dma_mapped_bytes: u64,
    /// The latest error met serving a guest (a refused message, a failed mapping, a
    /// device error), if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) guest_connected: AtomicBool,
    pub(super) guests_served: AtomicU64,
    pub(super) config_accesses: AtomicU64,
    pub(super) mmio_reads: AtomicU64,
    pub(super) mmio_writes: AtomicU64,
    pub(super) interrupts: AtomicU64,
    pub(super) polled_commands: AtomicU64,
    pub(super) polling: AtomicBool,
    pub(super) dma_mapped_bytes: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Errors logged in full before logging thins out.
const LOGGED_ERRORS: u64 = 20;

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Log `error` and keep it as the latest. A guest can send bad input as fast as it
    /// likes, so after the first [`LOGGED_ERRORS`] only every 1000th is logged.
    pub(super) fn error(&self, error: String) {
        let n = self.errors.fetch_add(1, Relaxed) + 1;
        if n <= LOGGED_ERRORS || n.is_multiple_of(1000) {
            tracing::warn!(errors = n, "{error}");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    pub(super) fn snapshot(&self, socket: PathBuf) -> FrontendStatus {
        FrontendStatus {
            socket,
            guest_connected: self.guest_connected.load(Relaxed),
            guests_served: self.guests_served.load(Relaxed),
            config_accesses: self.config_accesses.load(Relaxed),
            mmio_reads: self.mmio_reads.load(Relaxed),
            mmio_writes: self.mmio_writes.load(Relaxed),
            interrupts: self.interrupts.load(Relaxed),
            polled_commands: self.polled_commands.load(Relaxed),
            polling: self.polling.load(Relaxed),
            dma_mapped_bytes: self.dma_mapped_bytes.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
