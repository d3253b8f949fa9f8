//! The socket and its clients: bound mode 0600 (owned by the allowed user, if one is
//! named), one client served at a time on a thread of its own, each client's peer
//! credentials checked, and each session ended (device quiesced, DMA unmapped,
//! function rebuilt) before the next client is accepted.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dma::DmaMapper;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use udriver::vfio::EventFd;

use super::protocol::{reply_header, Reply};
use super::session::{Outcome, Session, SessionEndError, SessionOptions};
use super::status::{bump, ClientPeer, Counters, VfioUserStatus};
use super::wire::{send_reply, MessageReader, ReadError};
use crate::passthrough::{PassthroughDevice, PassthroughError, PassthroughFunction};
use crate::socket_file::{Peer, SocketFile, SocketFileError};

/// How a [`VfioUserServer`] listens.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The socket to create.
    pub socket: PathBuf,
    /// Besides root and this process's user, the user a VMM may run as (the socket
    /// is owned by it).
    pub allowed_uid: Option<u32>,
    /// What each session offers.
    pub session: SessionOptions,
}

/// Why a server could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Checking, binding or placing the listening socket failed.
    #[error("vfio-user socket {path}: {action}: {error}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        action: &'static str,
        /// The system's error.
        error: io::Error,
    },
    /// A live server answers on the socket path.
    #[error("vfio-user socket {0}: a server answers there already")]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error("vfio-user socket {0}: something other than a socket is there")]
    NotASocket(PathBuf),
    /// The passthrough function failed.
    #[error("vfio-user: {0}")]
    Function(#[from] PassthroughError),
    /// A session could not hand the device on, so the function is lost.
    #[error("vfio-user: {0}")]
    Session(#[from] SessionEndError),
    /// The server thread could not be spawned, or panicked.
    #[error("vfio-user server thread: {0}")]
    Thread(String),
}

/// A passthrough function served over vfio-user on a socket.
pub struct VfioUserServer<D: PassthroughDevice + 'static> {
    socket: PathBuf,
    direct_mmio: bool,
    counters: Arc<Counters>,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<Result<PassthroughFunction<D>, ServerError>>>,
}

/// Asks the server thread to end: a flag, an eventfd that wakes its accept, and the
/// connection it serves (shut down so that a blocked read returns).
struct Stop {
    requested: AtomicBool,
    wake: EventFd,
    client: Mutex<Option<UnixStream>>,
}

fn bind(path: &Path, owner: Option<u32>) -> Result<(SocketFile, UnixListener), ServerError> {
    match SocketFile::bind(path, owner) {
        Ok((file, listener, _)) => Ok((file, listener)),
        Err(SocketFileError::NotASocket(path)) => Err(ServerError::NotASocket(path)),
        Err(SocketFileError::InUse { path, .. }) => Err(ServerError::InUse(path)),
        Err(SocketFileError::Io {
            path,
            action,
            error,
        }) => Err(ServerError::Socket {
            path,
            action,
            error,
        }),
    }
}

/// Who may connect: root, this process's user, and the allowed one.
fn authorize(peer: &ClientPeer, allowed: Option<u32>) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid == 0 || peer.uid == me || Some(peer.uid) == allowed {
        return Ok(());
    }
    Err(format!(
        "uid {} (pid {}) may not use this device: only root, uid {me}{} may",
        peer.uid,
        peer.pid,
        allowed.map(|u| format!(" and uid {u}")).unwrap_or_default()
    ))
}

impl<D: PassthroughDevice + 'static> VfioUserServer<D> {
    /// Serve `function` on a new socket at `options.socket`, its DMA through `mapper`
    /// (the IOMMU container the device is attached to). Returns once the socket
    /// listens.
    pub fn start(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let (file, listener) = bind(&options.socket, options.allowed_uid)?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            wake: EventFd::new().map_err(|e| ServerError::Socket {
                path: options.socket.clone(),
                action: "creating its stop eventfd",
                error: e,
            })?,
            client: Mutex::new(None),
        });
        let socket = options.socket.clone();
        let direct_mmio = options.session.direct_mmio;
        let thread = {
            let counters = counters.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("udrv-vfio-user".into())
                .spawn(move || {
                    let _file = file;
                    serve(function, mapper, options, listener, &counters, &stop)
                })
                .map_err(|e| ServerError::Thread(e.to_string()))?
        };
        Ok(VfioUserServer {
            socket,
            direct_mmio,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Counters and the client now.
    pub fn status(&self) -> VfioUserStatus {
        self.counters
            .snapshot(self.socket.clone(), self.direct_mmio)
    }

    /// Disconnect the client (its session ends as on a disconnect: device
    /// quiesced, DMA unmapped), remove the socket and give the function back.
    pub fn stop(mut self) -> Result<PassthroughFunction<D>, ServerError> {
        self.request_stop();
        let thread = self.thread.take().expect("joined only here");
        thread
            .join()
            .map_err(|_| ServerError::Thread("panicked".into()))?
    }

    fn request_stop(&self) {
        self.stop.requested.store(true, Ordering::SeqCst);
        let _ = self.stop.wake.signal();
        if let Some(client) = self
            .stop
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl<D: PassthroughDevice + 'static> Drop for VfioUserServer<D> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.request_stop();
            let _ = thread.join();
        }
    }
}

/// Wait for a client or a stop; `None` on stop.
fn accept(listener: &UnixListener, stop: &Stop) -> io::Result<Option<UnixStream>> {
    loop {
        if stop.requested.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok(None);
        }
        if fds[0].any().unwrap_or(false) {
            let (stream, _) = listener.accept()?;
            return Ok(Some(stream));
        }
    }
}

/// Accept clients until stopped: each authorized one is handed to the serving
/// thread if it is idle; one that comes while another is served is refused (closed
/// at once, so that its VMM fails at its first message instead of waiting).
fn accept_clients(
    listener: &UnixListener,
    options: &ServerOptions,
    counters: &Counters,
    stop: &Stop,
    serving: &AtomicBool,
    clients: std::sync::mpsc::SyncSender<(UnixStream, ClientPeer)>,
) {
    loop {
        let stream = match accept(listener, stop) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                counters.error(format!("accepting a client: {e}"));
                continue;
            }
        };
        let peer = match Peer::of(&stream) {
            Ok(c) => ClientPeer {
                pid: c.pid,
                uid: c.uid,
            },
            Err(e) => {
                counters.error(format!("reading a client's credentials: {e}"));
                continue;
            }
        };
        if let Err(why) = authorize(&peer, options.allowed_uid) {
            counters.error(why);
            continue;
        }
        if serving
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            counters.error(format!(
                "pid {} (uid {}) refused: another client is being served on {}",
                peer.pid,
                peer.uid,
                options.socket.display()
            ));
            continue;
        }
        if clients.send((stream, peer)).is_err() {
            return;
        }
    }
}

fn serve<D: PassthroughDevice + 'static>(
    function: PassthroughFunction<D>,
    mapper: Arc<dyn DmaMapper>,
    options: ServerOptions,
    listener: UnixListener,
    counters: &Arc<Counters>,
    stop: &Stop,
) -> Result<PassthroughFunction<D>, ServerError> {
    let serving = AtomicBool::new(false);
    let (handoff, clients) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let acceptor =
            scope.spawn(|| accept_clients(&listener, &options, counters, stop, &serving, handoff));
        let served = serve_clients(
            function, &mapper, &options, counters, stop, &serving, &clients,
        );
        // The acceptor ends on the stop request; make sure it was made (the serving
        // side can also end on a device error).
        stop.requested.store(true, Ordering::SeqCst);
        let _ = stop.wake.signal();
        drop(clients);
        let _ = acceptor.join();
        served
    })
}

fn serve_clients<D: PassthroughDevice + 'static>(
    mut function: PassthroughFunction<D>,
    mapper: &Arc<dyn DmaMapper>,
    options: &ServerOptions,
    counters: &Arc<Counters>,
    stop: &Stop,
    serving: &AtomicBool,
    clients: &std::sync::mpsc::Receiver<(UnixStream, ClientPeer)>,
) -> Result<PassthroughFunction<D>, ServerError> {
    // The acceptor ends (and drops its sender) when stopped.
    while let Ok((stream, peer)) = clients.recv() {
        let Ok(clone) = stream.try_clone() else {
            counters.error("duplicating a client's socket".into());
            serving.store(false, Ordering::SeqCst);
            continue;
        };
        *stop.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
        if stop.requested.load(Ordering::SeqCst) {
            break;
        }
        counters.set_client(Some(peer));
        bump(&counters.clients_served);
        tracing::info!(pid = peer.pid, uid = peer.uid, socket = %options.socket.display(), "vfio-user client connected");
        let session = Session::with_counters(
            function,
            mapper.clone(),
            options.session.clone(),
            counters.clone(),
        )?;
        let session = converse(session, stream, counters);
        *stop.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // The status shows the client gone only once its session is over: the
        // device quiesced and its DMA unmapped; then the next client may come.
        let ended = session.end();
        serving.store(false, Ordering::SeqCst);
        counters.set_client(None);
        function = ended?;
        tracing::info!(
            pid = peer.pid,
            "vfio-user client gone; device quiesced, DMA unmapped"
        );
    }
    Ok(function)
}

/// Whether `stream` has something to read (or was closed) within `timeout`.
fn readable_within(stream: &UnixStream, timeout: std::time::Duration) -> io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Serve one client until it goes away or must be disconnected.
fn converse<D: PassthroughDevice + 'static>(
    mut session: Session<D>,
    stream: UnixStream,
    counters: &Counters,
) -> Session<D> {
    let mut reader = MessageReader::new();
    loop {
        // A device that needs looking at (a derived INTx with a command in flight)
        // is polled between messages.
        if let Some(interval) = session.poll_interval().filter(|_| !reader.has_buffered()) {
            match readable_within(&stream, interval) {
                Ok(true) => {}
                Ok(false) => {
                    session.poll_device();
                    continue;
                }
                Err(e) => {
                    counters.error(format!("waiting for the client: {e}"));
                    return session;
                }
            }
        }
        let (incoming, payload) = match reader.next(&stream) {
            Ok(m) => m,
            Err(ReadError::Closed) => return session,
            Err(ReadError::BadHeader(header, refusal)) => {
                bump(&counters.disconnects_for_errors);
                counters.error(format!("{refusal}; disconnecting"));
                let _ = send_reply(
                    &stream,
                    &reply_header(&header, 0, Some(refusal.errno)),
                    &Reply::empty(),
                );
                return session;
            }
            Err(ReadError::Io(e)) => {
                counters.error(format!("reading from the client: {e}"));
                return session;
            }
        };
        let outcome = match incoming.fd_refusal {
            // The fds were cut off: whatever the command, it cannot be carried out.
            Some(refusal) => {
                bump(&counters.messages);
                bump(&counters.error_replies);
                counters.error(refusal.to_string());
                if incoming.header.no_reply() {
                    Outcome::Nothing
                } else {
                    Outcome::Reply(
                        reply_header(&incoming.header, 0, Some(refusal.errno)),
                        Reply::empty(),
                    )
                }
            }
            None => session.handle(&incoming.header, payload, incoming.fds),
        };
        let (reply, last) = match outcome {
            Outcome::Reply(h, r) => (Some((h, r)), false),
            Outcome::Nothing => (None, false),
            Outcome::Disconnect(r) => (r, true),
        };
        if let Some((header, reply)) = reply {
            if let Err(e) = send_reply(&stream, &header, &reply) {
                counters.error(format!("replying to the client: {e}"));
                return session;
            }
        }
        if last {
            return session;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn vfio_user_peers_other_than_root_us_and_the_allowed_user_are_refused() {
        let me = nix::unistd::geteuid().as_raw();
        let peer = |uid| ClientPeer { pid: 42, uid };
        assert!(authorize(&peer(0), None).is_ok());
        assert!(authorize(&peer(me), None).is_ok());
        assert!(authorize(&peer(4242), Some(4242)).is_ok());
        let refused = authorize(&peer(4243), Some(4242)).unwrap_err();
        assert!(refused.contains("uid 4243 (pid 42)"), "{refused}");
        assert!(refused.contains("uid 4242"), "{refused}");
    }

    #[test]
    fn vfio_user_socket_is_0600_owned_as_asked_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let me = nix::unistd::geteuid().as_raw();
        let (file, _listener) = bind(&path, Some(me)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), me);
        // A live server there: refused; a regular file: refused.
        assert!(matches!(bind(&path, None), Err(ServerError::InUse(_))));
        drop(file);
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(matches!(bind(&path, None), Err(ServerError::NotASocket(_))));
    }
}
