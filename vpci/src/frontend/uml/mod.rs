//! Serving a passthrough function to a User-Mode Linux guest.
//!
//! UML with `CONFIG_UML_PCI_OVER_VIRTIO` connects to a vhost-user socket
//! (`virtio_uml.device=SOCKET:ID`, ID = its `CONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID`) and
//! forwards its PCI config and BAR accesses as [`virtio_pcidev`] commands. A
//! [`UmlFrontend`] is the back-end of that socket:
//!
//! ```text
//! UmlFrontend             listens, one guest at a time, on a thread of its own
//!   lifecycle             the served function and what a guest set up around it:
//!                         memory accepted, reset, quiesced, rebuilt for the next guest
//!   vhost_user::UmlBackend  vhost-user-backend back-end of one guest connection,
//!                         and what its vring worker does on each event
//!     commands            a round of commands: ring walk, chains, parse, execute
//!       ring              the command queue's split ring, read and written in place
//!       chain             descriptor chains -> message bytes, answers -> writable part
//!     dma::GuestDma       UML's memory mapped for DMA, IOVA = UML physical address
//!     interrupts          vector eventfds watched, MSI messages -> irq queue
//!     polling             optional: the worker keeps polling the queue after a batch
//!     realtime            the worker preempts the busy-waiting guest (SCHED_FIFO)
//!     affinity            optional: the worker pinned to a CPU
//!   error                 UmlError: what goes wrong serving, recorded, never fatal
//!   (counters -> FrontendStatus: frontend::status, shared by every frontend)
//! ```
//!
//! Config reads and writes go to [`PciFunction::config_read`]/`config_write`, BAR
//! accesses to `bar_read`/`bar_write` (the MSI-X table and PBA are emulated there,
//! everything else reaches the real BAR). Reads are answered in the same chain; UML
//! busy-waits for them. The command queue is never signalled: UML reclaims the
//! buffers of posted writes itself, as it waits for its next read or when its 20 write
//! buffers run out. A call would run UML 7.2's reclaim in interrupt context, which
//! takes no lock against `virtio_pcidev_send_cmd` adding to the same ring: a worker
//! answering on another CPU then corrupts UML's ring (reads time out, the device stops
//! working). By default the worker blocks in
//! epoll between batches and is woken by UML's kick: UML needs a CPU to send its next
//! command, and where it has the worker's CPU (one CPU, as in the test rig) that is the
//! fast path. Where the worker can have a CPU of its own, [`WorkerOptions`] make it
//! poll the queue for a while after each batch (and pin it to that CPU), which saves
//! each read UML's kick and the worker's wake-up. UML has no usable INTx: the guest's
//! MSI/MSI-X vectors are delivered as `MSI` messages, whose data UML takes as its IRQ
//! number; UML is asked to kick the irq queue only while a message waits for one of
//! its buffers.
//!
//! A limit of UML 7.2 no back-end can lift: `virtio_pcidev_send_cmd` is not safe against
//! the device's interrupts. When an interrupt arrives while UML waits for a read and
//! its handler reads a register, the handler's wait takes the first read's answer too,
//! and the first read gives up after 40 ms with all-ones (`um virt-pci delay`). A
//! worker on another CPU than UML, or one that polls, makes it likelier.
//!
//! When a guest disconnects or dies, the device is quiesced (bus mastering and vectors
//! off), its memory unmapped, and the function rebuilt from the device, so the next
//! guest on the same socket finds it freshly reset. VHOST_USER_RESET_DEVICE does the
//! same but keeps the memory table. VHOST_USER_RESET_OWNER is handled inside
//! vhost-user-backend and not seen here; a front-end that sends it sets up memory and
//! queues again, which replaces the mappings, and closing the socket quiesces.
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use udriver::vfio::{VfioContainer, VfioGroup};
//! use vpci::frontend::UmlFrontend;
//! use vpci::passthrough::{PassthroughFunction, VfioPassthroughDevice};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let container = Arc::new(VfioContainer::open()?);
//! let group = VfioGroup::open(12)?;
//! container.attach(&group)?;
//! let device = VfioPassthroughDevice::new(group.open_device("0000:00:04.0")?)?;
//! let function = PassthroughFunction::new(device)?;
//! let frontend = UmlFrontend::start(function, container, Path::new("/run/udrv/e1000e.sock"))?;
//! // linux ... virtio_uml.device=/run/udrv/e1000e.sock:1234
//! println!("{:?}", frontend.status());
//! let function = frontend.stop()?;
//! # Ok(()) }
//! ```
//!
//! [`virtio_pcidev`]: crate::frontend::virtio_pcidev
//! [`PciFunction::config_read`]: crate::PciFunction::config_read

mod affinity;
mod chain;
mod commands;
mod dma;
mod error;
mod interrupts;
mod lifecycle;
mod polling;
mod realtime;
mod ring;
#[cfg(test)]
mod tests;
mod vhost_user;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ::dma::DmaMapper;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use self::chain::{ChainError, MAX_BAR_ACCESS, MAX_MESSAGE};
use self::lifecycle::Shared;
use self::vhost_user::UmlBackend;
use crate::frontend::FrontendStatus;
// The command batch exactly as the worker runs it, for fuzzing.
#[doc(hidden)]
pub use self::commands::{CommandQueue, Round, COMMANDS_PER_ROUND};
pub use self::error::UmlError;
pub use self::ring::RingError;
use crate::passthrough::{PassthroughDevice, PassthroughFunction, VfioPassthroughDevice};

/// Why a UML frontend could not start, or could not give its function back.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// Something other than a socket is at the socket path; it is left alone.
    #[error("{}: exists and is not a socket; remove it or choose another path for UML's socket", socket.display())]
    NotASocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// A live server answers on the socket path.
    #[error("{}: another process is serving it (a connection succeeded); stop that server or choose another path", socket.display())]
    SocketInUse {
        /// The socket path.
        socket: PathBuf,
    },
    /// Setting up the listening socket (or its wake-up eventfd) failed.
    #[error("{}: cannot {action}: {source}; check that its directory exists and is writable", socket.display())]
    Socket {
        /// The socket path.
        socket: PathBuf,
        /// The step that failed ("listen", "remove the stale socket"...).
        action: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The server thread could not be spawned.
    #[error("{} ({device}): cannot start the thread serving it: {source}", socket.display())]
    Thread {
        /// The socket path.
        socket: PathBuf,
        /// The device served.
        device: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// On stop: the server thread had panicked; the function is not given back.
    #[error("{} ({device}): the thread serving it panicked; the device was quiesced and its guest memory unmapped", socket.display())]
    ServerPanicked {
        /// The socket path.
        socket: PathBuf,
        /// The device served.
        device: String,
    },
    /// On stop: the function was already lost (rebuilding it after a reset failed).
    #[error("{} ({device}): the function is gone: {reason}; detach the device and attach it again", socket.display())]
    FunctionLost {
        /// The socket path.
        socket: PathBuf,
        /// The device served.
        device: String,
        /// Why it was dropped, or "taken already".
        reason: String,
    },
}

/// How the worker that serves a guest's commands waits for them, and where it runs.
///
/// The default (no polling, any CPU) suits a machine where the guest and the worker
/// share CPUs. With a CPU to spare, `poll` and `cpu` together make served reads much
/// faster: see the [module](self) documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerOptions {
    /// After serving commands, keep polling the command queue (UML's kicks suppressed)
    /// until this long passes without a command, then sleep until UML's next kick.
    /// Zero: never poll. Interrupts and the guest's departure are still handled while
    /// polling. On a CPU the guest needs, polling starves the guest it waits for.
    pub poll: Duration,
    /// Pin the worker to this CPU (by the kernel's numbering, as in `taskset`).
    pub cpu: Option<usize>,
}

/// Stopping the server thread: a flag, a wake-up for its poll, the live connection.
struct Control {
    stopping: AtomicBool,
    wake: EventFd,
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Control {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Option<ShutdownHandle>> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until a guest connects (true) or the frontend stops (false).
    fn wait_for_guest(&self, socket: &GuestSocket) -> io::Result<bool> {
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let mut fds = [
                PollFd::new(socket.watch.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if self.stopping() {
                return Ok(false);
            }
            if fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
            {
                return Ok(true);
            }
        }
    }
}

/// A passthrough function served to one UML guest at a time over a vhost-user socket.
pub struct UmlFrontend<D: PassthroughDevice + 'static = VfioPassthroughDevice> {
    shared: Arc<Shared<D>>,
    control: Arc<Control>,
    server: Option<JoinHandle<()>>,
}

impl<D: PassthroughDevice + 'static> UmlFrontend<D> {
    /// Listen on `socket` (created; an existing stale socket file is replaced) and serve
    /// `function` to one UML guest at a time, on threads of its own. Guest memory from
    /// SET_MEM_TABLE is mapped through `mapper` with IOVA = UML physical address
    /// (identity policy), unmapped when the guest goes.
    pub fn start(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        socket: &Path,
    ) -> Result<Self, FrontendError> {
        Self::start_with(function, mapper, socket, WorkerOptions::default())
    }

    /// [`start`](Self::start), with the worker waiting for commands and placed as
    /// `worker` says.
    pub fn start_with(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        socket: &Path,
        worker: WorkerOptions,
    ) -> Result<Self, FrontendError> {
        let listener = listen(socket)?;
        let shared = Arc::new(Shared::new(function, mapper, socket.to_path_buf(), worker));
        let control = Arc::new(Control {
            stopping: AtomicBool::new(false),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).map_err(|e| {
                FrontendError::Socket {
                    socket: socket.to_path_buf(),
                    action: "create its wake-up eventfd",
                    source: e.into(),
                }
            })?,
            connection: Mutex::new(None),
        });
        let (s, c) = (shared.clone(), control.clone());
        let server = std::thread::Builder::new()
            .name("udrv-uml".into())
            .spawn(move || serve(listener, &s, &c))
            .map_err(|source| FrontendError::Thread {
                socket: socket.to_path_buf(),
                device: shared.device.clone(),
                source,
            })?;
        tracing::info!(
            socket = %socket.display(),
            device = %shared.device,
            poll_us = worker.poll.as_micros() as u64,
            cpu = ?worker.cpu,
            "serving to UML"
        );
        Ok(Self {
            shared,
            control,
            server: Some(server),
        })
    }

    /// The socket UML connects to.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// How its worker waits and where it runs.
    pub fn worker(&self) -> WorkerOptions {
        self.shared.worker
    }

    /// What the frontend has done so far.
    pub fn status(&self) -> FrontendStatus {
        self.shared.counters.snapshot(self.shared.socket.clone())
    }

    /// Stop serving: disconnect the guest, quiesce the device, remove the socket, and
    /// give the function back.
    pub fn stop(mut self) -> Result<PassthroughFunction<D>, FrontendError> {
        let panicked = !self.stop_server();
        let mut served = self.shared.served();
        for e in served.quiesce(&self.shared.mapper, &self.shared.counters) {
            self.shared.counters.error(e.to_string());
        }
        let lost = served.lost.clone();
        let function = served.function.take();
        drop(served);
        match function {
            _ if panicked => Err(FrontendError::ServerPanicked {
                socket: self.shared.socket.clone(),
                device: self.shared.device.clone(),
            }),
            Some(function) => Ok(function),
            None => Err(FrontendError::FunctionLost {
                socket: self.shared.socket.clone(),
                device: self.shared.device.clone(),
                reason: lost.unwrap_or_else(|| "taken already".into()),
            }),
        }
    }

    /// Stop the server thread and wait for it; false if it panicked.
    fn stop_server(&mut self) -> bool {
        let Some(server) = self.server.take() else {
            return true;
        };
        self.control.stopping.store(true, Ordering::Release);
        let _ = self.control.wake.write(1);
        if let Some(connection) = self.control.connection().as_ref() {
            connection.shutdown();
        }
        // A server blocked in accept() (a guest that connected and gave up at once)
        // wakes on a connection of its own.
        let _ = UnixStream::connect(&self.shared.socket);
        server.join().is_ok()
    }
}

impl<D: PassthroughDevice + 'static> Drop for UmlFrontend<D> {
    fn drop(&mut self) {
        if self.server.is_none() {
            return;
        }
        self.stop_server();
        // Never leave the device bus-mastering into memory that is about to go.
        for e in self
            .shared
            .served()
            .quiesce(&self.shared.mapper, &self.shared.counters)
        {
            self.shared.counters.error(e.to_string());
        }
    }
}

/// The socket UML connects to: vhost-user's listener over it, a second handle to wait
/// on with the stop eventfd, and its path, removed when this goes.
struct GuestSocket {
    listener: Listener,
    watch: UnixListener,
    path: PathBuf,
}

impl Drop for GuestSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `socket`, replacing a stale socket file but nothing else.
fn listen(socket: &Path) -> Result<GuestSocket, FrontendError> {
    let path = socket.to_path_buf();
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(FrontendError::NotASocket { socket: path })
        }
        Ok(_) => {
            if UnixStream::connect(socket).is_ok() {
                return Err(FrontendError::SocketInUse { socket: path });
            }
            std::fs::remove_file(socket).map_err(|source| FrontendError::Socket {
                socket: path.clone(),
                action: "remove the stale socket",
                source,
            })?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FrontendError::Socket {
                socket: path,
                action: "look at the path",
                source,
            })
        }
    }
    let listen_error = |source| FrontendError::Socket {
        socket: path.clone(),
        action: "listen",
        source,
    };
    let bound = UnixListener::bind(socket).map_err(listen_error)?;
    let watch = bound.try_clone().map_err(listen_error)?;
    Ok(GuestSocket {
        listener: Listener::from(bound),
        watch,
        path: path.clone(),
    })
}

/// The server thread: one guest after another until the frontend stops. Dropping the
/// socket at the end removes its file.
fn serve<D: PassthroughDevice + 'static>(
    mut socket: GuestSocket,
    shared: &Arc<Shared<D>>,
    control: &Control,
) {
    loop {
        match control.wait_for_guest(&socket) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                shared.counters.error(format!(
                    "{}: waiting for a guest: {e}",
                    shared.socket.display()
                ));
                break;
            }
        }
        if let Some(reason) = shared.served().lost.clone() {
            shared.counters.error(format!(
                "{} ({}): a guest connected but the function is gone ({reason}); no longer serving",
                shared.socket.display(),
                shared.device
            ));
            break;
        }
        serve_guest(&mut socket.listener, shared, control);
        if control.stopping() {
            break;
        }
    }
}

/// Accept one guest and serve it until it goes; then quiesce and reset.
fn serve_guest<D: PassthroughDevice + 'static>(
    listener: &mut Listener,
    shared: &Arc<Shared<D>>,
    control: &Control,
) {
    let backend = match UmlBackend::new(shared.clone()) {
        Ok(backend) => Arc::new(backend),
        Err(e) => {
            shared.counters.error(format!(
                "{}: setting up for a guest: {e}",
                shared.socket.display()
            ));
            return;
        }
    };
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = match VhostUserDaemon::new("udrv-uml-guest".into(), backend.clone(), memory) {
        Ok(daemon) => daemon,
        Err(e) => {
            shared.counters.error(format!(
                "{}: setting up for a guest: {e}",
                shared.socket.display()
            ));
            return;
        }
    };
    let workers = daemon.get_epoll_handlers();
    if let Some(worker) = workers.first() {
        backend.set_epoll(worker);
    }
    let counters = &shared.counters;
    match daemon.start(listener) {
        Ok(()) => {
            *control.connection() = daemon.shutdown_handle();
            if control.stopping() {
                daemon.request_shutdown();
            }
            counters.guest_connected.store(true, Ordering::Relaxed);
            counters.guests_served.fetch_add(1, Ordering::Relaxed);
            tracing::info!(socket = %shared.socket.display(), device = %shared.device, "UML guest connected");
            let result = daemon.wait();
            control.connection().take();
            match result {
                // UML closing its socket (powered off or killed) is the normal end.
                Ok(())
                | Err(vhost_user_backend::Error::HandleRequest(VhostUserError::Disconnected)) => {
                    tracing::info!(socket = %shared.socket.display(), "UML guest disconnected")
                }
                Err(e) if control.stopping() => {
                    tracing::info!(socket = %shared.socket.display(), "UML guest disconnected by stop ({e})")
                }
                Err(e) => counters.error(format!(
                    "{}: UML guest connection ended: {e}",
                    shared.socket.display()
                )),
            }
        }
        Err(e) => counters.error(format!(
            "{}: accepting a guest: {e}",
            shared.socket.display()
        )),
    }
    for worker in &workers {
        worker.send_exit_event();
    }
    backend.guest_left(false);
    counters.guest_connected.store(false, Ordering::Relaxed);
}
